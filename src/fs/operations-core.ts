import fs from 'node:fs';
import createDebug from 'debug';
import { VdiskError, fromNodeError } from '../io/errors';
import { seekExtent } from '../image/seek';
import { HandleTable, handleMode, wantsWrite, type Handle } from './handles';
import { IoFailureLog } from './io-failures';
import type { ImageTable } from './image-table';
import type { ImageView, ViewTree } from './view-tree';
import type { PartitionViews } from './partition-views';

const log = createDebug('vdiskfs:fs');

export interface CoreContext {
  tree: ViewTree;
  images: ImageTable;
  /** Partition files (absent with --no-partitions). */
  partitions?: PartitionViews;
  readOnly: boolean;
  warn: (message: string) => void;
}

/** What a transport needs to answer stat(2) for a mounted path. Times in ms since the epoch. */
export interface NodeAttr {
  kind: 'dir' | 'file';
  size: number;
  /** 512-byte blocks the image really takes (du tells the truth). */
  blocks: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  atimeMs: number;
  mtimeMs: number;
  ctimeMs: number;
  /** What this path shows: a new identity is a different file to the kernel (a new inode). */
  identity?: string;
}

export interface CoreDirEntry {
  name: string;
  kind: 'dir' | 'file';
}

export interface CoreFsStats {
  bsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namemax: number;
}

const O_TRUNC = 0o1000;
const FALLOC_KEEP_SIZE = 0x01;
const FALLOC_PUNCH_HOLE = 0x02;
const FALLOC_ZERO_RANGE = 0x10;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

/**
 * The operations core: everything a mount answers, by path and handle number, knowing neither
 * transport (src/fuse speaks the kernel protocol, operations.ts adapts fuse-native). Throws
 * VdiskError; the adapters turn codes into errno.
 *
 * Buffers belong to the transport: write() hands `data` to the merger before its first await
 * (the merger copies it at once), read() fills `into` in place.
 */
export class FsCore {
  private readonly handles = new HandleTable();
  /** Failed reads, writes and flushes, told to the daemon's log (io-failures.ts). */
  private readonly failures: IoFailureLog;

  constructor(private readonly ctx: CoreContext) {
    this.failures = new IoFailureLog(ctx.warn);
  }

  /** Tells the failure (io-failures.ts) and throws it on to the transport. */
  private failed(h: Handle, op: string, e: unknown): never {
    this.failures.note(h.entry.key, op, e);
    throw e;
  }

  /** How many files are open through the mount (a shutdown waits for them). */
  get openHandles(): number {
    return this.handles.all().length;
  }

  /** Drains and flushes every image that has an open handle (a stop signal: data safe before we detach). */
  async flushAll(): Promise<Error[]> {
    const errors: Error[] = [];
    const entries = new Set(this.handles.all().map((h) => h.entry));
    for (const e of entries) await e.merger.flush().catch((err: Error) => errors.push(err));
    return errors;
  }

  async getattr(path: string): Promise<NodeAttr> {
    const { tree, images } = this.ctx;
    const entry = await tree.resolve(path);
    if (!entry) throw new VdiskError('ENOENT', `${path} is not shown`);
    // Synchronous stats: each is microseconds, and `ls -l` of thousands of views asks for one each.
    const st = (entry.kind === 'image' ? tree.statJustTaken(entry.hostPath) : undefined) ?? statOrThrow(entry.hostPath);
    const times = { atimeMs: st.atimeMs, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, uid: st.uid, gid: st.gid };
    if (entry.kind === 'dir') return { kind: 'dir', size: 4096, blocks: 0, mode: S_IFDIR | 0o755, nlink: 2, ...times };
    const open = images.get(entry);
    const size = entry.partition ? entry.partition.size : open ? open.image.virtualSize : entry.virtualSize;
    const files = open ? open.image.hostFiles() : entry.hostFiles;
    let blocks = 0;
    // A partition's space is counted once, on the disk view (du of the folder stays true).
    if (!entry.partition)
      for (const f of files) blocks += (f === entry.hostPath ? st : fs.statSync(f, { throwIfNoEntry: false }))?.blocks ?? 0;
    const readOnly =
      this.ctx.readOnly ||
      entry.snapshot !== undefined ||
      (open?.readOnlyReason !== undefined && open.image.readOnly) ||
      (st.mode & 0o222) === 0 ||
      (await images.lockedByOthers(entry)); // QEMU or another mount writes it (its image locks)
    const identity = `${st.dev}:${st.ino}${entry.snapshot !== undefined ? `@${entry.snapshot}` : ''}${entry.partition ? `:p${entry.partition.offset}+${entry.partition.size}` : ''}`;
    return { kind: 'file', size, blocks, mode: S_IFREG | (readOnly ? 0o444 : 0o644), nlink: 1, identity, ...times };
  }

  async readdir(path: string): Promise<CoreDirEntry[]> {
    return (await this.ctx.tree.list(path)).map((e) => ({ name: e.name, kind: e.entry.kind === 'dir' ? 'dir' : 'file' }));
  }

  /** Opens a view; returns the handle number. O_TRUNC is ignored, as a block device ignores it. */
  async open(path: string, flags: number): Promise<number> {
    const { images } = this.ctx;
    const view = await this.imageView(path);
    const write = wantsWrite(flags);
    if (write) {
      const reason = this.ctx.readOnly ? 'mounted with --read-only' : await images.readOnlyReason(view);
      if (reason) throw VdiskError.readOnly(`${path} is read-only: ${reason}`);
    }
    if (flags & O_TRUNC) log('open %s: O_TRUNC ignored (a disk keeps its size and content)', path);
    const entry = await images.acquire(view, write);
    if (write && entry.image.readOnly) {
      await images.release(entry);
      throw VdiskError.readOnly(`${path} is read-only: ${entry.readOnlyReason ?? 'opened read-only by its driver'}`);
    }
    const fh = this.handles.add({ entry, writable: write, ...handleMode(flags), ...(view.partition ? { window: view.partition } : {}) });
    log('open %s flags=%s fh=%d', path, flags.toString(8), fh);
    return fh;
  }

  /** Fills `into` from `offset`; returns the bytes inside the disk (0 at or past its end). */
  read(fh: number, offset: number, into: Buffer): Promise<number> {
    const h = this.handle(fh);
    const size = sizeOf(h);
    if (offset >= size) return Promise.resolve(0);
    const n = Math.min(into.length, size - offset);
    return h.entry.merger.read(diskOffset(h, offset), into.length === n ? into : into.subarray(0, n)).then(
      () => n,
      (e: unknown) => this.failed(h, 'read', e),
    );
  }

  /** read() when it can be answered without waiting (RequestMerger.readSync); undefined: use read(). */
  readSync(fh: number, offset: number, into: Buffer): number | undefined {
    const h = this.handle(fh);
    const size = sizeOf(h);
    if (offset >= size) return 0;
    const n = Math.min(into.length, size - offset);
    try {
      return h.entry.merger.readSync(diskOffset(h, offset), into.length === n ? into : into.subarray(0, n)) === undefined ? undefined : n;
    } catch (e) {
      return this.failed(h, 'read', e);
    }
  }

  /** Writes `data` at `offset`; returns the bytes written. `data` is copied before this returns. */
  write(fh: number, offset: number, data: Buffer): Promise<number> {
    const h = this.handle(fh);
    if (!h.writable) throw new VdiskError('EBADF', 'handle is not open for writing');
    const size = sizeOf(h);
    if (offset >= size)
      throw VdiskError.noSpace(`write at ${offset} is past the end of the ${h.window ? 'partition' : 'disk'} (${size} bytes)`);
    const n = Math.min(data.length, size - offset);
    const at = diskOffset(h, offset);
    if (this.ctx.partitions?.noteWrite(h.entry.view, at, n)) this.ctx.tree.rebuild(h.entry.view.hostPath);
    // The merger copies the bytes synchronously, before anything is awaited (merger rule 7).
    return h.entry.merger.write(at, data.length === n ? data : data.subarray(0, n), { writeThrough: h.writeThrough, sync: h.sync }).then(
      () => n,
      (e: unknown) => this.failed(h, 'write', e),
    );
  }

  /** write() when it can be done without waiting (RequestMerger.writeSync): the bytes written, or undefined (nothing done): use write(). */
  writeSync(fh: number, offset: number, data: Buffer): number | undefined {
    const h = this.handle(fh);
    if (!h.writable) throw new VdiskError('EBADF', 'handle is not open for writing');
    const size = sizeOf(h);
    if (offset >= size) return undefined; // write() says why
    const n = Math.min(data.length, size - offset);
    const at = diskOffset(h, offset);
    const opts = { writeThrough: h.writeThrough, sync: h.sync };
    try {
      if (!h.entry.merger.writeSync(at, data.length === n ? data : data.subarray(0, n), opts)) return undefined;
    } catch (e) {
      this.failed(h, 'write', e);
    }
    if (this.ctx.partitions?.noteWrite(h.entry.view, at, n)) this.ctx.tree.rebuild(h.entry.view.hostPath);
    return n;
  }

  /** close(2) of a descriptor: a writer's data is drained and made durable, so errors reach the closing program. */
  async flush(fh: number): Promise<void> {
    const h = this.handles.get(fh);
    if (h?.writable) await h.entry.merger.flush().catch((e: unknown) => this.failed(h, 'close (flush)', e));
  }

  async fsync(fh: number, _datasync: boolean): Promise<void> {
    const h = this.handle(fh);
    await h.entry.merger.flush().catch((e: unknown) => this.failed(h, 'fsync', e));
  }

  /** The last close of an open file: the image is closed when its last handle goes. */
  async release(fh: number): Promise<void> {
    const h = this.handles.remove(fh);
    if (!h) return;
    if (h.writable && this.ctx.partitions) {
      // A writer closed the disk (mkfs, sfdisk, a VM): its partition list is read again.
      this.ctx.partitions.invalidate(h.entry.view);
      this.ctx.tree.rebuild(h.entry.view.hostPath);
    }
    await this.ctx.images.release(h.entry);
  }

  /**
   * truncate(2)/ftruncate(2): grows the disk; shrinking is refused. `openTruncate`: the transport
   * says this is an open's O_TRUNC (writeback cache), ignored as at open.
   */
  async truncate(path: string, size: number, opts: { openTruncate?: boolean } = {}): Promise<void> {
    const { tree, images } = this.ctx;
    const view = await this.imageView(path);
    if (opts.openTruncate) {
      log('truncate %s to %d from an O_TRUNC open: ignored (a disk keeps its size and content)', path, size);
      return;
    }
    if (view.partition) {
      if (size === view.partition.size) return;
      throw VdiskError.invalid(`${path} is a partition: its size comes from the partition table`);
    }
    const reason = this.ctx.readOnly ? 'mounted with --read-only' : await images.readOnlyReason(view);
    if (reason) throw VdiskError.readOnly(`${path} is read-only: ${reason}`);
    const entry = await images.acquire(view, true);
    try {
      if (size === entry.image.virtualSize) return;
      if (entry.image.readOnly)
        throw VdiskError.readOnly(`${path} is read-only: ${entry.readOnlyReason ?? 'opened read-only by its driver'}`);
      if (size < entry.image.virtualSize) {
        this.ctx.warn(`refused to shrink ${path} to ${size} bytes (shrinking loses data; for dd use conv=notrunc)`);
        throw VdiskError.invalid('shrinking an image is not supported');
      }
      if (!entry.image.resize) throw VdiskError.unsupported(`${view.driver.name} images cannot be resized`);
      await entry.merger.flush();
      await entry.image.resize(size);
      tree.invalidate(view.hostPath);
    } finally {
      await images.release(entry);
    }
  }

  /**
   * fallocate(2) on an open view (mode: FALLOC_FL_* bits), as on a disk: PUNCH_HOLE|KEEP_SIZE
   * discards (space back to the image; fstrim through a loop device lands here), ZERO_RANGE
   * writes zeros (zero clusters where the format can), mode 0 inside the disk has nothing to do.
   * Past the end without KEEP_SIZE the image grows where its format can, else ENOSPC.
   */
  async fallocate(fh: number, offset: number, length: number, mode: number): Promise<void> {
    const h = this.handle(fh);
    if (!h.writable) throw new VdiskError('EBADF', 'handle is not open for writing');
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0)
      throw VdiskError.invalid(`fallocate [${offset}, +${length})`);
    log('fallocate fh=%d mode=0x%s [%d, +%d)', fh, mode.toString(16), offset, length);
    const known = FALLOC_KEEP_SIZE | FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE;
    const punch = mode === (FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE);
    if (
      (mode & ~known) !== 0 ||
      ((mode & FALLOC_PUNCH_HOLE) !== 0 && !punch) ||
      ((mode & FALLOC_ZERO_RANGE) !== 0 && (mode & FALLOC_PUNCH_HOLE) !== 0)
    ) {
      throw VdiskError.unsupported(`fallocate mode 0x${mode.toString(16)} is not supported on a disk view`);
    }
    const size = sizeOf(h);
    const end = offset + length;
    const inside = Math.max(0, Math.min(end, size) - offset);
    if (inside > 0) {
      const at = diskOffset(h, offset);
      if (punch) await h.entry.merger.discard(at, inside).catch((e: unknown) => this.failed(h, 'discard', e));
      else if (mode & FALLOC_ZERO_RANGE)
        await h.entry.merger.writeZeroes(at, inside).catch((e: unknown) => this.failed(h, 'zero-range', e));
    }
    if (end > size && (mode & FALLOC_KEEP_SIZE) === 0) await this.grow(h, end);
  }

  /** fallocate past the end: the image grows where its format can (to a 512-byte multiple), else ENOSPC. */
  private async grow(h: Handle, end: number): Promise<void> {
    const image = h.entry.image;
    if (h.window) throw VdiskError.noSpace('a partition cannot grow past its end');
    if (!image.resize) throw VdiskError.noSpace(`${image.format} images cannot grow`);
    const newSize = Math.ceil(end / 512) * 512;
    try {
      await h.entry.merger.resize(newSize);
    } catch (e) {
      if (e instanceof VdiskError && (e.code === 'EROFS' || e.code === 'ENOSPC')) throw e;
      throw VdiskError.noSpace(`cannot grow ${image.path} to ${newSize} bytes: ${(e as Error).message}`);
    }
    this.ctx.tree.invalidate(h.entry.view.hostPath);
  }

  /**
   * lseek(2) SEEK_DATA (3) / SEEK_HOLE (4) on an open view, from the driver's map through the
   * backing chain (src/image/seek.ts), after pending writes reached the driver. Past the end,
   * or SEEK_DATA with no data after `offset`: ENXIO, as lseek(2) says.
   */
  async lseek(fh: number, offset: number, whence: number): Promise<number> {
    const h = this.handle(fh);
    const size = sizeOf(h);
    if (offset < 0) throw VdiskError.invalid(`lseek to ${offset}`);
    if (offset >= size)
      throw new VdiskError('ENXIO', `lseek whence ${whence} at ${offset} is past the end of the ${h.window ? 'partition' : 'disk'}`);
    if (whence !== SEEK_DATA && whence !== SEEK_HOLE) throw VdiskError.invalid(`lseek whence ${whence}`);
    await h.entry.merger.drain();
    const base = diskOffset(h, 0);
    const at = await seekExtent(h.entry.image, base + offset, whence === SEEK_DATA ? 'data' : 'hole', base + size);
    if (at < 0) throw new VdiskError('ENXIO', `no data after ${offset}`);
    return at - base;
  }

  async statfs(): Promise<CoreFsStats> {
    const s = await fs.promises.statfs(this.ctx.tree.root);
    return { bsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, namemax: 255 };
  }

  private handle(fh: number): Handle {
    const h = this.handles.get(fh);
    if (!h) throw new VdiskError('EBADF', `no open handle ${fh}`);
    return h;
  }

  private async imageView(path: string): Promise<ImageView> {
    const entry = await this.ctx.tree.resolve(path);
    if (!entry) throw new VdiskError('ENOENT', `${path} is not shown`);
    if (entry.kind !== 'image') throw new VdiskError('EISDIR', `${path} is a folder`);
    return entry;
  }
}

/** The size a handle sees: its partition's, or the whole disk's. */
function sizeOf(h: Handle): number {
  return h.window ? h.window.size : h.entry.image.virtualSize;
}

/** A handle's offset as an offset in the disk view. */
function diskOffset(h: Handle, offset: number): number {
  return h.window ? h.window.offset + offset : offset;
}

function statOrThrow(file: string): fs.Stats {
  try {
    return fs.statSync(file);
  } catch (e) {
    throw fromNodeError(e, `stat ${file}`);
  }
}
