import fs from 'node:fs';
import createDebug from 'debug';
import { asError, fromNodeError, VdiskError } from './errors';
import { IoCounters, IoEvent, IoObserver, IoTag, newCounters } from './counters';
import { WriteBehind } from './write-behind';
import { SyscallError } from './syscalls/ffi';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  fallocate,
  LockType,
  ofdLock,
  ofdTestLock,
  preadCached,
  preadFully,
  preadSome,
  pwriteFully,
  pwriteSome,
} from './syscalls/files';

const log = createDebug('vdiskfs:io');

/** Observers see every host I/O of every file (tests use this to check write ordering). */
const observers = new Set<IoObserver>();
export function addIoObserver(o: IoObserver): () => void {
  observers.add(o);
  return () => observers.delete(o);
}

/**
 * Requests up to this size are done with synchronous syscalls on the main thread. They hit the
 * host page cache almost always, and a trip through libuv's thread pool (two thread switches)
 * costs more than the copy itself: on a 2-core machine it was most of a 4 KiB FUSE request's
 * time. Larger requests, and fdatasync, stay asynchronous so the loop never stalls for long.
 */
export const SYNC_IO_MAX = Number(process.env.VDISKFS_SYNC_IO_MAX ?? 256 * 1024);

/**
 * Reads above SYNC_IO_MAX, up to this size (the largest FUSE request), are also done on the main
 * thread when the host page cache holds all of their bytes (readSync, preadv2 RWF_NOWAIT): such a
 * read is only a copy, and the thread pool's two switches and the loop's wake-up cost a 1 MiB
 * psync read a third of its speed here. A read that would wait for a disk still goes to the pool.
 */
export const SYNC_CACHED_READ_MAX = 1 << 20;

/** Runs the synchronous syscall for small requests, the thread-pool one for the rest. */
function small<T>(bytes: number, sync: () => T, async: (cb: (e: Error | null, v: T) => void) => void): Promise<T> {
  if (bytes <= SYNC_IO_MAX) {
    try {
      return Promise.resolve(sync());
    } catch (e) {
      return Promise.reject(asError(e));
    }
  }
  return new Promise((res, rej) => async((e, v) => (e ? rej(e) : res(v))));
}

const pRead = (fd: number, buf: Buffer, off: number, len: number, pos: number, name: string) =>
  small(
    len,
    () => preadSome(fd, off === 0 && len === buf.length ? buf : buf.subarray(off, off + len), pos, name),
    (cb) => fs.read(fd, buf, off, len, pos, (e, n) => cb(e, n)),
  );
const pWrite = (fd: number, buf: Buffer, off: number, len: number, pos: number, name: string) =>
  small(
    len,
    () => pwriteSome(fd, off === 0 && len === buf.length ? buf : buf.subarray(off, off + len), pos, name),
    (cb) => fs.write(fd, buf, off, len, pos, (e, n) => cb(e, n)),
  );
const pWritev = (fd: number, bufs: Buffer[], pos: number, total: number) =>
  small(
    total,
    () => fs.writevSync(fd, bufs, pos),
    (cb) => fs.writev(fd, bufs, pos, (e, n) => cb(e, n)),
  );

/**
 * Opens `path` without blocking, refusing anything but a regular file or a block device. The
 * open and its fstat are synchronous calls on the main thread: neither can wait here (O_NONBLOCK
 * keeps a FIFO from parking us; a local open is a few microseconds), and two thread-pool trips per
 * image were most of the cost of opening one of a folder of thousands (#20).
 */
export async function openNonBlocking(path: string, flags: number): Promise<number> {
  return openNonBlockingSync(path, flags);
}

export function openNonBlockingSync(path: string, flags: number): number {
  const all = flags | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW;
  let fd: number;
  try {
    fd = fs.openSync(path, all);
  } catch (e) {
    throw openError(e as NodeJS.ErrnoException, path);
  }
  try {
    let st: fs.Stats;
    try {
      st = fs.fstatSync(fd);
    } catch (e) {
      throw fromNodeError(e, `stat ${path}`);
    }
    if (!st.isFile() && !st.isBlockDevice())
      throw new VdiskError('EINVAL', `${path} is ${st.isDirectory() ? 'a folder' : 'a special file'}, not a regular file`);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  return fd;
}

function openError(e: NodeJS.ErrnoException, path: string): VdiskError {
  if (e.code === 'ELOOP') return new VdiskError('EINVAL', `${path} is a symlink (give the file it points to)`, {}, { cause: e });
  if (e.code === 'ENOENT') return new VdiskError('ENOENT', `cannot open ${path}: no such file`, {}, { cause: e });
  if (e.code === 'EISDIR') return new VdiskError('EINVAL', `${path} is a folder, not a file`, {}, { cause: e });
  return fromNodeError(e, `open ${path}`);
}

/**
 * A host file (image, extent, backing file) with positional, loop-until-done reads and writes.
 * Short reads and writes happen; every method here completes the whole request or throws.
 */
export class HostFile {
  readonly counters: IoCounters = newCounters();
  private closed = false;
  /**
   * The first fdatasync failure, kept for good. After a failed fdatasync Linux may have marked
   * the pages it could not write clean, and the next fdatasync succeeds with them never written
   * (what PostgreSQL met in 2018; QEMU's file-posix fails every later flush for the same reason).
   * What is on the disk is unknown from then on, so every later datasync fails without asking
   * the kernel; reopening the image (remounting) starts again from what is on the disk.
   */
  private syncFailure: Error | undefined;
  /** Starts the host's writeback of streams as they are written (src/io/write-behind.ts). */
  private readonly writeBehind: WriteBehind;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly writable: boolean,
  ) {
    this.writeBehind = new WriteBehind(fd, path, (offset, length) => this.emit('writeback', offset, length));
  }

  /**
   * Opens an image's file. Never blocks and never opens anything but a regular file or a block
   * device: O_NONBLOCK keeps a FIFO from parking a thread in open(), O_NOFOLLOW refuses a final
   * symlink (callers pass resolved paths, see src/image/confine.ts), and the type is checked on
   * the descriptor itself, so a file swapped in after the caller looked cannot slip through.
   */
  static async open(path: string, writable: boolean): Promise<HostFile> {
    const fd = await openNonBlocking(path, writable ? fs.constants.O_RDWR : fs.constants.O_RDONLY);
    log('open %s %s', path, writable ? 'rw' : 'ro');
    return new HostFile(path, fd, writable);
  }

  static async create(path: string): Promise<HostFile> {
    const flags = fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL;
    const fd = await new Promise<number>((res, rej) =>
      fs.open(path, flags, 0o644, (e, fd) => (e ? rej(fromNodeError(e, `create ${path}`)) : res(fd))),
    );
    return new HostFile(path, fd, true);
  }

  /**
   * Fills `into` from `pos`; bytes past the end of the host file read as zeros (images may end
   * before their last cluster does). Returns how many bytes really came from the file.
   */
  async read(into: Buffer, pos: number, tag?: IoTag): Promise<number> {
    let done = 0;
    try {
      while (done < into.length) {
        const n = await pRead(this.fd, into, done, into.length - done, pos + done, this.path);
        if (n === 0) break;
        done += n;
      }
    } catch (e) {
      throw fromNodeError(e, `read ${this.path} at ${pos}`);
    }
    this.readDone(into, pos, done, tag);
    return done;
  }

  /**
   * read() done synchronously, for a request small enough for the main thread (SYNC_IO_MAX), or
   * up to SYNC_CACHED_READ_MAX whose bytes are all in the host page cache. False otherwise:
   * nothing counted, though `into` may hold part of the bytes (read() fills all of it again).
   */
  readSync(into: Buffer, pos: number, tag?: IoTag): boolean {
    if (into.length > SYNC_IO_MAX) return this.readCachedSync(into, pos, tag);
    let done: number;
    try {
      done = preadFully(this.fd, into, pos, this.path);
    } catch (e) {
      throw fromNodeError(e, `read ${this.path} at ${pos}`);
    }
    this.readDone(into, pos, done, tag);
    return true;
  }

  /** readSync above SYNC_IO_MAX: only from the page cache, never waiting for a disk. */
  private readCachedSync(into: Buffer, pos: number, tag: IoTag | undefined): boolean {
    if (into.length > SYNC_CACHED_READ_MAX) return false;
    let done = 0;
    try {
      while (done < into.length) {
        const n = preadCached(this.fd, into.subarray(done), pos + done);
        if (n < 0) return false;
        if (n === 0) break;
        done += n;
      }
    } catch (e) {
      throw fromNodeError(e, `read ${this.path} at ${pos}`);
    }
    this.readDone(into, pos, done, tag);
    return true;
  }

  /** After a read of `done` bytes: zeros past the end of the file, counters, observers. */
  private readDone(into: Buffer, pos: number, done: number, tag: IoTag | undefined): void {
    if (done < into.length) into.fill(0, done);
    this.counters.reads++;
    this.counters.bytesRead += done;
    this.emit('read', pos, into.length, tag);
  }

  /** Writes one buffer or a vector of buffers contiguously at `pos` (one writev syscall when it can). */
  async write(data: Buffer | Buffer[], pos: number, tag?: IoTag): Promise<void> {
    const bufs = Array.isArray(data) ? data.filter((b) => b.length > 0) : [data];
    let total = 0;
    for (const b of bufs) total += b.length;
    if (total === 0) return;
    try {
      const written =
        bufs.length === 1 ? await pWrite(this.fd, bufs[0]!, 0, total, pos, this.path) : await pWritev(this.fd, bufs, pos, total);
      if (written < total) {
        // Short write (rare: signals, full disks): finish the rest from one contiguous copy.
        const rest = Buffer.concat(bufs).subarray(written);
        for (let off = 0; off < rest.length;) off += await pWrite(this.fd, rest, off, rest.length - off, pos + written + off, this.path);
      }
    } catch (e) {
      throw fromNodeError(e, `write ${this.path} at ${pos}`);
    }
    this.counters.writes++;
    this.counters.bytesWritten += total;
    this.emit('write', pos, total, tag);
    this.writeBehind.wrote(pos, total);
  }

  /**
   * write() of one buffer done synchronously, for a request small enough for the main thread
   * (SYNC_IO_MAX); false (nothing done) for a larger one. The caller may reuse `data` at once.
   */
  writeSync(data: Buffer, pos: number, tag?: IoTag): boolean {
    if (data.length > SYNC_IO_MAX) return false;
    try {
      pwriteFully(this.fd, data, pos, this.path);
    } catch (e) {
      throw fromNodeError(e, `write ${this.path} at ${pos}`);
    }
    this.counters.writes++;
    this.counters.bytesWritten += data.length;
    this.emit('write', pos, data.length, tag);
    this.writeBehind.wrote(pos, data.length); // as write() does: a 256 KiB extent may come either way
    return true;
  }

  /**
   * Makes every completed write durable (fdatasync). Once one failed, every later call fails too
   * (syncFailure): no flush may acknowledge bytes that may be lost.
   */
  async datasync(tag?: IoTag): Promise<void> {
    if (this.syncFailure) throw this.earlierSyncFailed(this.syncFailure);
    try {
      await new Promise<void>((res, rej) => fs.fdatasync(this.fd, (e) => (e ? rej(fromNodeError(e, `fdatasync ${this.path}`)) : res())));
    } catch (e) {
      this.syncFailure ??= asError(e);
      throw e;
    }
    this.counters.flushes++;
    this.emit('flush', 0, 0, tag);
  }

  private earlierSyncFailed(first: Error): VdiskError {
    return VdiskError.io(
      `${this.path}: an earlier flush to the host disk failed (${first.message}), so what reached the disk is unknown; ` +
        'every flush fails until the image is opened again',
      {},
      first,
    );
  }

  async size(): Promise<number> {
    return (await this.stat()).size;
  }

  /** fstat on the main thread: it never waits, and a thread-pool trip costs more than the call. */
  async stat(): Promise<fs.Stats> {
    try {
      return fs.fstatSync(this.fd);
    } catch (e) {
      throw fromNodeError(e, `stat ${this.path}`);
    }
  }

  /**
   * An OFD byte-range lock on this descriptor, without waiting (src/image/locks.ts speaks QEMU's
   * protocol with it). False when another open file description holds a conflicting lock.
   */
  lockBytes(start: number, length: number, type: LockType): boolean {
    return ofdLock(this.fd, start, length, type);
  }

  /** Would a lock of `type` conflict with another open file description's lock? */
  testLockBytes(start: number, length: number, type: LockType): boolean {
    return ofdTestLock(this.fd, start, length, type) !== undefined;
  }

  /**
   * Gives the host blocks of [offset, offset+length) back (fallocate PUNCH_HOLE|KEEP_SIZE): the
   * range reads as zeros, the file keeps its size. False when the host filesystem cannot punch.
   */
  punchHole(offset: number, length: number, tag?: IoTag): boolean {
    if (length <= 0) return true;
    try {
      fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    } catch (e) {
      const errno = e instanceof SyscallError ? e.errno : '';
      if (errno === 'EOPNOTSUPP' || errno === 'ENOTSUP' || errno === 'ENOSYS') return false;
      throw e;
    }
    this.emit('punch', offset, length, tag);
    return true;
  }

  /**
   * Makes the file at least `length` bytes long; never shrinks it. fstat and ftruncate in one
   * synchronous step on the main thread: a thread-pool ftruncate could run after a write issued
   * later had already extended the file further, and cut that write off. True when it grew.
   */
  extendTo(length: number): boolean {
    try {
      if (fs.fstatSync(this.fd).size >= length) return false;
      fs.ftruncateSync(this.fd, length);
    } catch (e) {
      throw fromNodeError(e, `extend ${this.path} to ${length}`);
    }
    this.emit('truncate', length, 0);
    return true;
  }

  async truncate(length: number): Promise<void> {
    await new Promise<void>((res, rej) =>
      fs.ftruncate(this.fd, length, (e) => (e ? rej(fromNodeError(e, `truncate ${this.path}`)) : res())),
    );
    this.emit('truncate', length, 0);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.writeBehind.stop();
    // On the main thread, as open is: closing a local file does not wait for its data.
    try {
      fs.closeSync(this.fd);
    } catch (e) {
      throw fromNodeError(e, `close ${this.path}`);
    }
    log('close %s reads=%d writes=%d flushes=%d', this.path, this.counters.reads, this.counters.writes, this.counters.flushes);
  }

  private emit(kind: IoEvent['kind'], offset: number, length: number, tag?: IoTag): void {
    if (observers.size === 0) return;
    for (const o of observers) o({ kind, path: this.path, offset, length, tag });
  }
}
