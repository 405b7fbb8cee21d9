import * as fs from 'node:fs';
import * as path from 'node:path';
import createDebug from 'debug';
import type { MergerOptions } from '../merge';
import { VdiskError } from '../io/errors';
import { Confinement } from '../image';
import { FuseSession, isMounted, unmountPath } from './fuse-session';
import { HandleTable } from './handles';
import { ImageTable } from './image-table';
import { makeOperations } from './operations';
import { ViewTree } from './view-tree';

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
  cacheSize?: number;
  noMultiAlloc?: boolean;
  /** Print every image's counters (host I/O, metadata writes, cache hits, merging) at unmount. */
  stats?: boolean;
  warn(message: string): void;
}

/** How often we look whether someone else (umount, fusermount -u) unmounted us. */
const WATCH_MS = 250;

/** A live mount. `finished` resolves once everything is flushed and closed after unmount. */
export class MountedFs {
  readonly finished: Promise<{ errors: Error[] }>;
  private finish!: (r: { errors: Error[] }) => void;
  private stopping = false;
  private watch?: NodeJS.Timeout;

  constructor(readonly mountpoint: string, private readonly images: ImageTable, private readonly onClosed?: () => void) {
    this.finished = new Promise((res) => (this.finish = res));
  }

  startWatching(): void {
    this.watch = setInterval(() => {
      if (!this.stopping && !isMounted(this.mountpoint)) void this.shutdown('unmounted from outside');
    }, WATCH_MS);
  }

  /** Unmount (lazily, so a busy mount still goes), then drain every merger and close every image. */
  async shutdown(why: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    log('shutting down: %s', why);
    if (this.watch) clearInterval(this.watch);
    if (isMounted(this.mountpoint)) await unmountPath(this.mountpoint, true).catch((e: Error) => log('unmount: %s', e.message));
    const errors = await this.images.closeAll();
    this.onClosed?.();
    this.finish({ errors });
  }
}

/** User mistakes found before anything is mounted, each one clear line. */
export function checkMountArguments(images: string, mountpoint: string): void {
  const st = fs.statSync(images, { throwIfNoEntry: false });
  if (!st) throw new VdiskError('ENOENT', `images folder ${images} does not exist`);
  if (!st.isDirectory()) throw new VdiskError('EINVAL', `${images} is not a folder`);
  const mt = fs.statSync(mountpoint, { throwIfNoEntry: false });
  if (!mt) throw new VdiskError('ENOENT', `mountpoint ${mountpoint} does not exist (mkdir -p ${mountpoint})`);
  if (!mt.isDirectory()) throw new VdiskError('EINVAL', `mountpoint ${mountpoint} is not a folder`);
  if (isMounted(mountpoint)) throw new VdiskError('EBUSY', `${mountpoint} is already mounted (vdiskfs unmount ${mountpoint})`);
  if (path.resolve(mountpoint).startsWith(path.resolve(images) + path.sep)) {
    throw new VdiskError('EINVAL', `mountpoint ${mountpoint} is inside the images folder ${images}`);
  }
  if (!fs.existsSync('/dev/fuse')) throw new VdiskError('ENOENT', '/dev/fuse is missing (modprobe fuse, or run the container with --device /dev/fuse)');
}

export async function mountImages(opts: MountOptions): Promise<MountedFs> {
  const images = path.resolve(opts.images);
  const mountpoint = path.resolve(opts.mountpoint);
  checkMountArguments(images, mountpoint);

  const confinement = await Confinement.create(images, opts.allowOutside);
  let table: ImageTable | undefined;
  const tree = new ViewTree(images, { includeRaw: opts.includeRaw, warn: opts.warn, confinement, isOpen: (p) => table?.isOpen(p) ?? false });
  table = new ImageTable({
    readOnly: opts.readOnly,
    nullDriver: opts.nullDriver,
    cacheSize: opts.cacheSize,
    noMultiAlloc: opts.noMultiAlloc,
    merger: opts.merger,
    confinement,
    warn: opts.warn,
    isBackingOfAnother: (p) => tree.isBackingOfAnother(p),
  });
  const ops = makeOperations({ tree, images: table, handles: new HandleTable(), readOnly: opts.readOnly, warn: opts.warn });
  const session = new FuseSession(mountpoint, ops, { extraOptions: opts.fuseOptions, debug: opts.debug, readOnly: opts.readOnly });
  await session.mount();
  const imageTable = table;
  const mounted = new MountedFs(mountpoint, table, opts.stats ? () => process.stderr.write(imageTable.sessionStats.report(images) + '\n') : undefined);
  mounted.startWatching();
  log('mounted %s on %s', images, mountpoint);
  return mounted;
}
