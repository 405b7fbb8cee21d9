/**
 * Foundation: the raw driver behind our mount, between the disk's ceiling (the plain file)
 * and the FUSE stack's ceiling (a mount whose driver reads zeros and discards writes).
 */
import * as path from 'node:path';
import { createEmpty, imageForJob } from '../lib/images';
import { runFioMatrix } from '../lib/matrix';
import type { Target } from '../lib/matrix';
import { mountOurs, transportRequestSizes } from '../lib/mounts';
import { ceilingTable, cpuTable } from '../lib/report';
import type { SectionContext, SectionReport } from './context';
import * as fs from 'node:fs';

const IMAGE = 'disk.img';

export async function foundationSection(ctx: SectionContext): Promise<SectionReport> {
  const { cfg, templates } = ctx;
  const mounted = (id: string, title: string, extraArgs: string[], nullDriver: boolean): Target => ({
    id,
    title,
    async setup(job, dir) {
      const images = path.join(dir, 'images');
      fs.mkdirSync(images);
      const file = path.join(images, IMAGE);
      if (nullDriver) await createEmpty(file, 'raw', cfg.imageSize);
      else await imageForJob(file, 'raw', job.needsFilledImage, templates, cfg.imageSize);
      const m = await mountOurs({
        images,
        mountpoint: path.join(dir, 'mnt'),
        imageName: IMAGE,
        extraArgs: [...extraArgs, '--stats'],
        nodeArgs: ctx.nodeArgs,
      });
      return { file: m.target, stop: () => m.stop(), pid: m.pid, requestSizes: () => transportRequestSizes(m.output()) };
    },
  });
  const targets: Target[] = [
    {
      id: 'plain',
      title: 'plain file',
      async setup(job, dir) {
        const file = path.join(dir, IMAGE);
        await imageForJob(file, 'raw', job.needsFilledImage, templates, cfg.imageSize);
        return { file, stop: async () => {} };
      },
    },
    mounted('null', 'do-nothing mount', ['--null-driver', '--include-raw'], true),
    mounted('null-native', 'do-nothing mount, fuse-native', ['--null-driver', '--include-raw', '--transport', 'fuse-native'], true),
    mounted('raw', 'raw via merger', ['--include-raw'], false),
    mounted('nomerge', 'raw --no-merge', ['--include-raw', '--no-merge'], false),
  ];
  ctx.log('## foundation: plain file / do-nothing mount / raw driver (merger on and off)');
  const m = await runFioMatrix({
    name: 'foundation',
    jobs: ctx.jobs,
    targets,
    repeat: cfg.repeat,
    settings: ctx.settings,
    workRoot: ctx.workRoot,
    log: ctx.log,
  });
  ctx.record('foundation', {
    samples: m.samples.toJSON(),
    cpuMicrosPerRequest: m.cpu.toJSON(),
    requestSizes: Object.fromEntries(m.requestSizes),
    unavailable: Object.fromEntries(m.unavailable),
    failed: Object.fromEntries(m.failed),
  });
  const table = ceilingTable(m, ctx.jobs, targets, 'null', ['raw', 'nomerge', 'null-native'], (job, target) =>
    job.id === 'seqw4k' && target === 'raw' ? 0.9 : undefined,
  );
  const cpu = cpuTable(
    m,
    ctx.jobs,
    targets.filter((t) => t.id !== 'plain'),
    targets.find((t) => t.id === 'null')!,
  );
  return [
    '## Foundation: raw driver through our FUSE stack (MB/s, median)',
    '',
    "The plain file is the disk's ceiling; the do-nothing mount (`--null-driver`: reads zeros, discards writes) is the FUSE stack's ceiling. Ratios are against the do-nothing mount; done-when: seq write 4k through the merger ≥ 0.9x.",
    '',
    table,
    '',
    'Server CPU per request (µs) and the request sizes the kernel transport saw on the do-nothing mount:',
    '',
    cpu,
  ].join('\n');
}
