/**
 * qcow2 and VMDK through our mount vs qemu-storage-daemon's FUSE export, on identical fresh
 * images (`qemu-img create -f <fmt> X 1G`; for the read jobs the same qemu-img-converted
 * filled image for both).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openImage } from '../../src/image';
import { createEmpty, extensionFor, imageForJob, type ImageFormat } from '../lib/images';
import type { FioJob } from '../lib/fio';
import { runFioMatrix } from '../lib/matrix';
import type { MatrixResult, Target } from '../lib/matrix';
import { mountOurs, mountPeer, transportRequestSizes } from '../lib/mounts';
import { cpuTable, limitTable, pairTable, peerTable } from '../lib/report';
import { firstLineOf } from '../lib/procs';
import { qsd10 } from '../lib/qemu10';
import { onCleanup } from '../lib/cleanup';
import type { SectionContext } from './context';

export type DiskFormat = Exclude<ImageFormat, 'raw'>;

/**
 * Whether our driver can serve the format at all: open a fresh image writable, write, read it
 * back. A placeholder driver throws ENOTSUP here; its message becomes the "not available" reason.
 */
export async function driverAvailable(format: DiskFormat, dir: string, size: number): Promise<string | undefined> {
  const file = path.join(dir, `probe.${extensionFor(format)}`);
  try {
    await createEmpty(file, format, size);
    const img = await openImage(file, { writable: true, checkExtension: true }); // as the mount would: by content, the name agreeing
    try {
      const data = Buffer.alloc(65536, 0x5a);
      await img.write(1 << 20, Buffer.from(data));
      const back = Buffer.alloc(65536);
      await img.read(1 << 20, back);
      if (!back.equals(data)) return `${format} driver read back different data than it wrote`;
      await img.flush();
    } finally {
      await img.close();
    }
    return undefined;
  } catch (e) {
    return (e as Error).message;
  } finally {
    fs.rmSync(file, { force: true });
  }
}

/**
 * A target served by our mount of one image of `format` in a folder of its own: the image made
 * for the job (filled for read jobs), or `empty` (the do-nothing driver reads nothing of it).
 */
function ourMount(
  ctx: SectionContext,
  id: string,
  title: string,
  format: ImageFormat,
  extraArgs: string[],
  opts: { empty?: boolean; imageName?: string } = {},
): Target {
  const name = opts.imageName ?? `x.${extensionFor(format)}`;
  return {
    id,
    title,
    async setup(job, dir) {
      const images = path.join(dir, 'images');
      fs.mkdirSync(images);
      const file = path.join(images, name);
      if (opts.empty) await createEmpty(file, format, ctx.cfg.imageSize);
      else await imageForJob(file, format, job.needsFilledImage, ctx.templates, ctx.cfg.imageSize);
      const m = await mountOurs({ images, mountpoint: path.join(dir, 'mnt'), imageName: name, extraArgs, nodeArgs: ctx.nodeArgs });
      return { file: m.target, stop: () => m.stop(), pid: m.pid, requestSizes: () => transportRequestSizes(m.output()) };
    },
  };
}

export function peerTargets(ctx: SectionContext, format: DiskFormat): [Target, Target, Target, Target] {
  const name = `x.${extensionFor(format)}`;
  const ours = ourMount(ctx, 'ours', 'vdiskfs', format, ['--stats']);
  const peer: Target = {
    id: 'peer',
    title: 'qemu-storage-daemon',
    async setup(job, dir) {
      const image = path.join(dir, name);
      await imageForJob(image, format, job.needsFilledImage, ctx.templates, ctx.cfg.imageSize);
      const m = await mountPeer({ image, format, mountFile: path.join(dir, 'export') });
      return { file: m.target, stop: () => m.stop(), pid: m.pid };
    },
  };
  // The FUSE stack's ceiling in the same run: our mount with a driver that does nothing, on
  // our kernel-protocol transport and on the old fuse-native (libfuse 2.9) one.
  const doNothing = (id: string, title: string, transport: string): Target =>
    ourMount(ctx, id, title, format, ['--null-driver', '--stats', '--transport', transport], { empty: true });
  return [
    ours,
    peer,
    doNothing('null', 'do-nothing mount', 'kernel'),
    doNothing('null-native', 'do-nothing mount, fuse-native', 'fuse-native'),
  ];
}

/**
 * The limit's two references (#21 item 3): fio on a raw file of the host, no FUSE at all, and on
 * our mount's view of the same kind of raw file (`--include-raw`): the transport's cost alone.
 */
export function limitTargets(ctx: SectionContext): [Target, Target] {
  const IMAGE = 'disk.img';
  const host: Target = {
    id: 'host',
    title: 'host raw file',
    async setup(job, dir) {
      const file = path.join(dir, IMAGE);
      await imageForJob(file, 'raw', job.needsFilledImage, ctx.templates, ctx.cfg.imageSize);
      return { file, stop: async () => {} };
    },
  };
  const rawView = ourMount(ctx, 'rawview', 'raw view', 'raw', ['--include-raw', '--stats'], { imageName: IMAGE });
  return [host, rawView];
}

const ENABLE_URING = '/sys/module/fuse/parameters/enable_uring';
let uringRestore: (() => Promise<void>) | undefined;

/**
 * Switches the fuse module's enable_uring on for the run (put back as it was at the end), or
 * says why FUSE over io_uring cannot be measured here.
 */
function enableIoUring(): string | undefined {
  let was: string;
  try {
    was = fs.readFileSync(ENABLE_URING, 'utf8').trim();
  } catch {
    return 'this kernel has no FUSE over io_uring (Linux 6.14+, CONFIG_FUSE_IO_URING)';
  }
  if (was !== 'Y' && !uringRestore) {
    fs.writeFileSync(ENABLE_URING, 'Y');
    uringRestore = onCleanup('enable_uring', () => fs.writeFileSync(ENABLE_URING, was));
  }
  return undefined;
}

/**
 * The io-uring transport (#21 item 5) beside the /dev/fuse loop: our qcow2 mount and the
 * do-nothing mount with `--transport io-uring`, in the same matrix.
 */
export function ioUringTargets(ctx: SectionContext, format: DiskFormat): Target[] {
  const mounted = (id: string, title: string, nullDriver: boolean): Target => {
    const t = ourMount(ctx, id, title, format, [...(nullDriver ? ['--null-driver'] : []), '--stats', '--transport', 'io-uring'], {
      empty: nullDriver,
    });
    return {
      ...t,
      setup(job, dir) {
        const why = enableIoUring();
        if (why) throw new Error(why);
        return t.setup(job, dir);
      },
    };
  };
  return [mounted('uring', 'vdiskfs, io-uring', false), mounted('null-uring', 'do-nothing mount, io-uring', true)];
}

/** The limit's target: a format's view at least this share of the raw view's speed. */
export const FORMAT_VIEW_GOAL = 0.9;

/** qemu-storage-daemon 10.0 on the same images as the first peer, when it could be fetched (lib/qemu10.ts). */
export function peer10Target(ctx: SectionContext, format: DiskFormat): Target | undefined {
  const q = qsd10(ctx.log);
  if ('unavailable' in q) return undefined;
  const name = `x.${extensionFor(format)}`;
  return {
    id: 'peer10',
    title: 'qemu-storage-daemon 10',
    async setup(job, dir) {
      const image = path.join(dir, name);
      await imageForJob(image, format, job.needsFilledImage, ctx.templates, ctx.cfg.imageSize);
      const m = await mountPeer({ image, format, mountFile: path.join(dir, 'export'), binary: q.path });
      return { file: m.target, stop: () => m.stop(), pid: m.pid };
    },
  };
}

/** Which binaries the peers were, for the report. */
function peersLine(ctx: SectionContext): string {
  const v7 = firstLineOf('qemu-storage-daemon', ['--version'])?.replace(/^qemu-storage-daemon version /, '') ?? 'missing';
  const q = qsd10(ctx.log);
  const v10 =
    'unavailable' in q ? `not measured: ${q.unavailable}` : `${q.version} (bookworm-backports, unpacked into bench/.cache/qemu-10)`;
  return `Peers: qemu-storage-daemon ${v7} (the system's) and qemu-storage-daemon ${v10}.`;
}

export async function peerFio(
  ctx: SectionContext,
  format: DiskFormat,
  goal: (job: FioJob) => number,
  opts: { withFuseNative?: boolean; withIoUring?: boolean } = {},
): Promise<{ table: string; result: MatrixResult }> {
  const [ours, peer, ceiling, native] = peerTargets(ctx, format);
  const peer10 = peer10Target(ctx, format);
  // The fuse-native baseline measures the transport, not a format: the qcow2 and VMDK sections carry it.
  const withNative = opts.withFuseNative ?? true;
  const [host, rawView] = limitTargets(ctx);
  const uring = opts.withIoUring ? ioUringTargets(ctx, format) : [];
  const targets = [ours, peer, ...(peer10 ? [peer10] : []), ceiling, ...(withNative ? [native] : []), host, rawView, ...uring];
  const result = await runFioMatrix({
    name: format,
    jobs: ctx.jobs,
    targets,
    repeat: ctx.cfg.repeat,
    settings: ctx.settings,
    workRoot: ctx.workRoot,
    log: ctx.log,
  });
  ctx.record(`${format}-fio`, {
    samples: result.samples.toJSON(),
    cpuMicrosPerRequest: result.cpu.toJSON(),
    requestSizes: Object.fromEntries(result.requestSizes),
    unavailable: Object.fromEntries(result.unavailable),
    failed: Object.fromEntries(result.failed),
  });
  const table = [
    peersLine(ctx),
    '',
    peerTable(result, ctx.jobs, ours, peer, goal, ceiling, withNative ? [native] : []),
    '',
    ...(peer10
      ? [`Against ${peer10.title} (#21's target: every job ≥ 1.5x):`, '', peerTable(result, ctx.jobs, ours, peer10, () => 1.5), '']
      : []),
    `The limit: the host's raw file (no FUSE), our raw view (the transport's cost alone) and our ${format} view (the driver's), same run. Target: ${format} view / raw view ≥ ${FORMAT_VIEW_GOAL}.`,
    '',
    limitTable(result, ctx.jobs, host, rawView, { ...ours, title: `${format} view` }, FORMAT_VIEW_GOAL),
    '',
    ...(uring.length
      ? [
          `The io-uring transport (FUSE over io_uring) against the /dev/fuse loop, same run (${format}):`,
          '',
          pairTable(result, ctx.jobs, [
            [ours, uring[0]!],
            [ceiling, uring[1]!],
          ]),
          '',
        ]
      : []),
    `Server CPU per request and the request sizes our transport saw (${format}):`,
    '',
    cpuTable(
      result,
      ctx.jobs,
      targets.filter((t) => t !== host),
      ours,
    ),
  ].join('\n');
  return { table, result };
}
