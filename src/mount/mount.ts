import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import * as path from 'node:path';
import createDebug from 'debug';
import type { MergerOptions } from '../merge';
import { VdiskError } from '../io/errors';
import { Confinement, type DriverTuning, type Image } from '../image';
import { MNT_DETACH, geteuid, umount2 } from '../io/syscalls';
import { isMounted, isOurMount, unmountPath } from '../fuse/mountinfo';
import { ImageTable } from '../fs/image-table';
import { parseFuseOptions, userMayAllowOther } from '../fuse/mount-options';
import { FsCore } from '../fs/operations-core';
import type { Transport, TransportName } from '../fuse/transport';
import { startTransport } from './transports';
import { ViewTree, type ImageView } from '../fs/view-tree';
import { PartitionViews } from '../fs/partition-views';

const log = createDebug('vdiskfs:fs');

export interface MountOptions {
  images: string;
  mountpoint: string;
  readOnly: boolean;
  includeRaw: boolean;
  debug: boolean;
  /** Passed through as `-o` options (allow_other, ...). */
  fuseOptions: string[];
  /** Benchmark only: serve every image with a driver that does nothing. */
  nullDriver: boolean;
  merger: MergerOptions;
  /** Folders outside `images` that images may reach too (--allow-outside). */
  allowOutside: string[];
  /** Per-driver knobs (--cache-size, --no-multi-alloc), passed down untouched. */
  tuning?: DriverTuning;
  /** Print every image's counters (host I/O, metadata writes, cache hits, merging) at unmount. */
  stats?: boolean;
  /** Who speaks FUSE to the kernel: our kernel-protocol loop (default) or fuse-native (libfuse 2.9). */
  transport?: TransportName;
  /** Show each partition of a disk view as a file of its own (default on; --no-partitions). */
  partitions?: boolean;
  /** Kernel transport: the kernel caches writes (WRITEBACK_CACHE). */
  writebackCache?: boolean;
  /** Kernel transport: the longest busy-poll of /dev/fuse before sleeping, µs (--poll-max-us). */
  pollMaxUs?: number;
  warn: (message: string) => void;
}

/** fuse-native: how often we look whether someone else (umount, fusermount -u) unmounted us. */
const WATCH_MS = 250;

/**
 * A live mount. `finished` resolves once everything is flushed and closed after unmount.
 *
 * Kernel transport: a stop (signal) flushes every image, detaches the mount lazily and keeps
 * serving the files still open (a loop device, a reader) until the kernel ends the session with
 * the last close; an outside umount ends it the same way. fuse-native: the mount goes at once.
 */
export class MountedFs {
  readonly finished: Promise<{ errors: Error[] }>;
  private finish!: (r: { errors: Error[] }) => void;
  private stopping = false;
  private closing = false;
  private watch?: NodeJS.Timeout;

  constructor(
    readonly mountpoint: string,
    private readonly images: ImageTable,
    private readonly core: FsCore,
    private readonly tree: ViewTree,
    readonly transport: Transport,
    private readonly onClosed?: () => void,
  ) {
    this.finished = new Promise((res) => (this.finish = res));
    void transport.ended.then(() => this.closeImages('the kernel ended the session'));
    if (!transport.servesAfterDetach) {
      this.watch = setInterval(() => {
        if (!this.stopping && !isMounted(this.mountpoint)) void this.shutdown('unmounted from outside');
      }, WATCH_MS);
    }
  }

  /**
   * How many images the mount shows and how many it leaves out, counted in this process (each
   * left-out one is logged as it is found): what a background mount prints once it serves.
   */
  census(): Promise<{ shown: number; leftOut: number }> {
    return this.tree.census();
  }

  /** Flush every image, detach lazily; then (kernel transport) serve open files until the last close. */
  async shutdown(why: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    log('shutting down: %s', why);
    if (this.watch) clearInterval(this.watch);
    if (this.transport.servesAfterDetach) {
      await this.transport.flushKernelCache?.().catch((e: Error) => log('kernel writeback at shutdown: %s', e.message));
      const errors = await this.core.flushAll();
      for (const e of errors) log('flush at shutdown: %s', e.message);
    }
    if (isMounted(this.mountpoint)) await detach(this.mountpoint).catch((e: Error) => log('unmount: %s', e.message));
    if (!this.transport.servesAfterDetach) await this.closeImages(why);
    else if (this.core.openHandles > 0) log('detached; serving %d open file(s) until they are closed', this.core.openHandles);
  }

  private async closeImages(why: string): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.watch) clearInterval(this.watch);
    log('closing every image: %s', why);
    const errors = await this.images.closeAll();
    this.onClosed?.();
    this.finish({ errors });
  }
}

/** Lazy unmount: root detaches with umount2 itself; a user asks fusermount3. */
async function detach(mountpoint: string): Promise<void> {
  if (geteuid() === 0) return umount2(mountpoint, MNT_DETACH);
  await unmountPath(mountpoint, true);
}

/**
 * User mistakes found before anything is mounted, each one clear line. A dead mount of ours (its
 * daemon died: stat fails ENOTCONN) is cleared, with a line saying so.
 */
export function checkMountArguments(images: string, mountpoint: string, fuseOptions: string[] = [], warn?: (m: string) => void): void {
  const o = parseFuseOptions(fuseOptions);
  const st = fs.statSync(images, { throwIfNoEntry: false });
  if (!st) throw new VdiskError('ENOENT', `images folder ${images} does not exist`);
  if (!st.isDirectory()) throw new VdiskError('EINVAL', `${images} is not a folder`);
  clearDeadMount(mountpoint, warn);
  const mt = fs.statSync(mountpoint, { throwIfNoEntry: false });
  if (!mt) throw new VdiskError('ENOENT', `mountpoint ${mountpoint} does not exist (mkdir -p ${mountpoint})`);
  if (!mt.isDirectory()) throw new VdiskError('EINVAL', `mountpoint ${mountpoint} is not a folder`);
  if (isMounted(mountpoint)) throw new VdiskError('EBUSY', `${mountpoint} is already mounted (vdiskfs unmount ${mountpoint})`);
  if (path.resolve(mountpoint).startsWith(path.resolve(images) + path.sep)) {
    throw new VdiskError('EINVAL', `mountpoint ${mountpoint} is inside the images folder ${images}`);
  }
  if (!o.nonempty && fs.readdirSync(mountpoint).length > 0)
    throw new VdiskError('EINVAL', `mountpoint ${mountpoint} is not empty (use -o nonempty to mount over its files)`);
  if (!fs.existsSync('/dev/fuse'))
    throw new VdiskError('ENOENT', '/dev/fuse is missing (modprobe fuse, or run the container with --device /dev/fuse)');
  if (o.allowOther && geteuid() !== 0 && !userMayAllowOther()) {
    throw new VdiskError(
      'EINVAL',
      '-o allow_other needs user_allow_other in /etc/fuse.conf (as root: echo user_allow_other >> /etc/fuse.conf)',
    );
  }
}

/**
 * A vdiskfs mount whose daemon is gone answers every stat with ENOTCONN (ECONNABORTED when it
 * served through FUSE over io_uring: the ring's teardown aborts the connection): detach it so the
 * mountpoint is usable again. Only our own mounts are stat'ed (another FUSE server that hangs
 * would hang us).
 */
function clearDeadMount(mountpoint: string, warn?: (m: string) => void): void {
  if (!isMounted(mountpoint) || !isOurMount(mountpoint)) return;
  try {
    fs.statSync(mountpoint);
    return;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOTCONN' && code !== 'ECONNABORTED') return;
  }
  try {
    if (geteuid() === 0) umount2(mountpoint, MNT_DETACH);
    else execFileSync('fusermount3', ['-u', '-z', mountpoint], { stdio: 'ignore' });
  } catch (e) {
    throw new VdiskError('EBUSY', `${mountpoint} holds a dead vdiskfs mount that could not be cleared: ${(e as Error).message}`);
  }
  warn?.(`cleared a dead vdiskfs mount on ${mountpoint} (its daemon had died)`);
}

export async function mountImages(opts: MountOptions): Promise<MountedFs> {
  const images = path.resolve(opts.images);
  const mountpoint = path.resolve(opts.mountpoint);
  checkMountArguments(images, mountpoint, opts.fuseOptions, opts.warn);

  const confinement = await Confinement.create(images, opts.allowOutside);
  // Assigned once below; the tree's isOpen callback (made first) reads it later.
  // eslint-disable-next-line prefer-const
  let table: ImageTable | undefined;
  let partitions: PartitionViews | undefined;
  const tree = new ViewTree(images, {
    includeRaw: opts.includeRaw,
    warn: opts.warn,
    confinement,
    isOpen: (p) => table?.isOpen(p) ?? false,
    ...(opts.partitions === false
      ? {}
      : {
          partitionsOf: (v: ImageView, stamp?: string) => partitions!.partitionsOf(v, stamp),
          readPartitions: (v: ImageView, i: Image) => partitions!.readFrom(v, i),
        }),
  });
  table = new ImageTable({
    readOnly: opts.readOnly,
    nullDriver: opts.nullDriver,
    tuning: opts.tuning,
    merger: opts.merger,
    confinement,
    warn: opts.warn,
    isBackingOfAnother: (p) => tree.isBackingOfAnother(p),
    keepStats: opts.stats ?? false,
  });
  if (opts.partitions !== false) partitions = new PartitionViews(table, opts.warn);
  const core = new FsCore({ tree, images: table, readOnly: opts.readOnly, warn: opts.warn, ...(partitions ? { partitions } : {}) });
  const transport = await startTransport(opts.transport ?? 'kernel', {
    mountpoint,
    core,
    options: parseFuseOptions(opts.fuseOptions),
    readOnly: opts.readOnly,
    debug: opts.debug,
    writebackCache: opts.writebackCache ?? false,
    ...(opts.pollMaxUs !== undefined ? { pollMaxUs: opts.pollMaxUs } : {}),
    warn: opts.warn,
  });
  const imageTable = table;
  const report = () => {
    const lines = [imageTable.sessionStats.report(images), transport.report()].filter(Boolean);
    process.stderr.write(lines.join('\n') + '\n');
  };
  const mounted = new MountedFs(mountpoint, table, core, tree, transport, opts.stats ? report : undefined);
  log('mounted %s on %s (%s transport)', images, mountpoint, transport.name);
  return mounted;
}
