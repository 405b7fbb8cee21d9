/**
 * Foundation: the raw driver behind our mount, between the disk's ceiling (the plain file)
 * and the FUSE stack's ceiling (a mount whose driver reads zeros and discards writes).
 */
import * as path from 'node:path';
import { createEmpty, imageForJob } from '../lib/images';
import { runFioMatrix } from '../lib/matrix';
import type { Target } from '../lib/matrix';
import { mountOurs } from '../lib/mounts';
import { ceilingTable } from '../lib/report';
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
      const m = await mountOurs({ images, mountpoint: path.join(dir, 'mnt'), imageName: IMAGE, extraArgs, nodeArgs: ctx.nodeArgs });
      return { file: m.target, stop: () => m.stop() };
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
    mounted('raw', 'raw via merger', ['--include-raw'], false),
    mounted('nomerge', 'raw --no-merge', ['--include-raw', '--no-merge'], false),
  ];
  ctx.log('## foundation: plain file / do-nothing mount / raw driver (merger on and off)');
  const m = await runFioMatrix({ name: 'foundation', jobs: ctx.jobs, targets, repeat: cfg.repeat, settings: ctx.settings, workRoot: ctx.workRoot, log: ctx.log });
  ctx.record('foundation', { samples: m.samples.toJSON(), unavailable: Object.fromEntries(m.unavailable), failed: Object.fromEntries(m.failed) });
  const table = ceilingTable(m, ctx.jobs, targets, 'null', ['raw', 'nomerge'], (job, target) => (job.id === 'seqw4k' && target === 'raw' ? 0.9 : undefined));
  return [
    '## Foundation: raw driver through our FUSE stack (MB/s, median)',
    '',
    'The plain file is the disk\'s ceiling; the do-nothing mount (`--null-driver`: reads zeros, discards writes) is the FUSE stack\'s ceiling. Ratios are against the do-nothing mount; done-when: seq write 4k through the merger ≥ 0.9x.',
    '',
    table,
  ].join('\n');
}
