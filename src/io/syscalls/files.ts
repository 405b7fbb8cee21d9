/**
 * Calls on host files that Node's fs lacks: OFD byte-range locks (QEMU's image locking protocol),
 * fcntl flags, fallocate (punch, zero range), SEEK_DATA/SEEK_HOLE, syncfs, sync_file_range, and a read(2) that
 * returns -errno instead of throwing (the /dev/fuse loop's EAGAIN is not exceptional).
 */
import { VdiskError } from '../errors';
import { asyncCallFailed, errnoName, fail, ffi, type Ffi } from './ffi';

// ---- OFD byte-range locks (fcntl F_OFD_*): owned by the open file description, not the process ----

export type LockType = 'read' | 'write' | 'unlock';

const F_GETFL = 3;
const F_SETFL = 4;
const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
const SEEK_SET = 0;
const LOCK_TYPES: Record<LockType, number> = { read: 0 /* F_RDLCK */, write: 1 /* F_WRLCK */, unlock: 2 /* F_UNLCK */ };

function flockBuffer(f: Ffi, start: number, len: number, type: LockType): Buffer {
  const buf = Buffer.alloc(f.koffi.sizeof(f.flock));
  // l_pid must be 0 on input for OFD locks (the kernel refuses anything else with EINVAL).
  f.koffi.encode(buf, f.flock, { l_type: LOCK_TYPES[type], l_whence: SEEK_SET, l_start: start, l_len: len, l_pid: 0 });
  return buf;
}

/**
 * Takes (or releases) an OFD lock on [start, start+len) without waiting (len 0: to the end of
 * the file). Returns false when another open file description holds a conflicting lock.
 */
export function ofdLock(fd: number, start: number, len: number, type: LockType): boolean {
  const f = ffi();
  if (f.fcntl(fd, F_OFD_SETLK, 'void *', flockBuffer(f, start, len, type)) === 0) return true;
  const e = errnoName(f);
  if (e === 'EAGAIN' || e === 'EACCES') return false;
  return fail(f, 'fcntl', `F_OFD_SETLK fd ${fd} [${start}, +${len})`, { fd, start, len, type });
}

/**
 * Would a lock of `type` on [start, start+len) conflict? Returns the first conflicting lock, or
 * undefined. Locks held through `fd` itself never conflict. pid is -1 for OFD locks.
 */
export function ofdTestLock(fd: number, start: number, len: number, type: LockType): { type: LockType; pid: number } | undefined {
  const f = ffi();
  const buf = flockBuffer(f, start, len, type);
  if (f.fcntl(fd, F_OFD_GETLK, 'void *', buf) !== 0) fail(f, 'fcntl', `F_OFD_GETLK fd ${fd} [${start}, +${len})`, { fd, start, len, type });
  const out = f.koffi.decode(buf, f.flock) as { l_type: number; l_pid: number };
  if (out.l_type === LOCK_TYPES.unlock) return undefined;
  return { type: out.l_type === LOCK_TYPES.write ? 'write' : 'read', pid: out.l_pid };
}

export function fcntlGetFlags(fd: number): number {
  const f = ffi();
  const flags = f.fcntl(fd, F_GETFL, 'int', 0) as number;
  if (flags < 0) fail(f, 'fcntl', `F_GETFL fd ${fd}`, { fd });
  return flags;
}

export function fcntlSetFlags(fd: number, flags: number): void {
  const f = ffi();
  if (f.fcntl(fd, F_SETFL, 'int', flags) !== 0) fail(f, 'fcntl', `F_SETFL fd ${fd}`, { fd, flags });
}

// ---- fallocate ----

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

export function fallocate(fd: number, mode: number, offset: number, length: number): void {
  const f = ffi();
  if (f.fallocate(fd, mode, offset, length) !== 0)
    fail(f, 'fallocate', `fd ${fd} mode 0x${mode.toString(16)} [${offset}, +${length})`, { fd, mode, offset, length });
}

// ---- read without exceptions ----

export const EAGAIN = 11;
export const EINTR = 4;
export const ENOENT = 2;
export const ENODEV = 19;

/**
 * read(2) into `buf`: the byte count, or -errno. For a non-blocking fd read in a loop, where
 * EAGAIN is the normal end of every batch: no exception object is built for it (fs.readSync's
 * costs ~10 µs, the call itself ~1 µs).
 */
export function readOrErrno(fd: number, buf: Buffer, count = buf.length): number {
  const f = ffi();
  const n = f.read(fd, buf, count);
  return n >= 0 ? n : -f.koffi.errno();
}

/**
 * write(2) of `buf[0, count)`: the byte count, or -errno. The /dev/fuse reply, where ENOENT (the
 * request was interrupted) and ENODEV (the session ended) are answers, not exceptions; about
 * 0.7 µs cheaper per call than fs.writeSync here, and every request has a reply.
 */
export function writeOrErrno(fd: number, buf: Buffer, count = buf.length): number {
  const f = ffi();
  const n = f.write(fd, buf, count);
  return n >= 0 ? n : -f.koffi.errno();
}

// ---- pread/pwrite on the main thread ----
//
// The synchronous host I/O of small requests: cheaper per call than fs.readSync/writeSync, whose
// path through libuv (request wrap, trace-event checks) costs about as much as the syscall on
// this VM. A failure throws a SyscallError (ENOSPC, EIO, ... as the errno says) naming `name`.

/** One pread(2) into `buf` at `pos`: the byte count (short at the end of the file, 0 past it). */
export function preadSome(fd: number, buf: Buffer, pos: number, name = `fd ${fd}`): number {
  const f = ffi();
  for (;;) {
    const n = f.pread(fd, buf, buf.length, pos);
    if (n >= 0) return n;
    if (f.koffi.errno() !== EINTR) fail(f, 'pread', `${name} at ${pos}`, { fd, pos });
  }
}

/** One pwrite(2) of `buf` at `pos`: the byte count (short only in rare cases: a full disk, a signal). */
export function pwriteSome(fd: number, buf: Buffer, pos: number, name = `fd ${fd}`): number {
  const f = ffi();
  for (;;) {
    const n = f.pwrite(fd, buf, buf.length, pos);
    if (n > 0 || (n === 0 && buf.length === 0)) return n;
    if (n === 0) throw VdiskError.io(`pwrite ${name} at ${pos}: wrote nothing`, { fd, pos });
    if (f.koffi.errno() !== EINTR) fail(f, 'pwrite', `${name} at ${pos}`, { fd, pos });
  }
}

/** pread(2) into all of `buf` from `pos`: the byte count, short only at the end of the file. */
export function preadFully(fd: number, buf: Buffer, pos: number, name?: string): number {
  let done = 0;
  while (done < buf.length) {
    const n = preadSome(fd, done === 0 ? buf : buf.subarray(done), pos + done, name);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** pwrite(2) of all of `buf` at `pos`, a short write going on with the rest. */
export function pwriteFully(fd: number, buf: Buffer, pos: number, name?: string): void {
  for (let done = 0; done < buf.length;) done += pwriteSome(fd, done === 0 ? buf : buf.subarray(done), pos + done, name);
}

// ---- preadv2(RWF_NOWAIT) ----

const RWF_NOWAIT = 0x8;

/**
 * Reads into `buf` at `pos` only what the host page cache already holds: preadv2(RWF_NOWAIT)
 * never waits for a disk. The byte count (short where the cached part ends, 0 at the end of the
 * file), or -1 when nothing at `pos` is cached (EAGAIN) or the filesystem cannot say
 * (EOPNOTSUPP). Other errors throw.
 */
export function preadCached(fd: number, buf: Buffer, pos: number): number {
  const f = ffi();
  const n = f.preadv2(fd, [{ iov_base: buf, iov_len: buf.length }], 1, pos, RWF_NOWAIT);
  if (n >= 0) return n;
  const name = errnoName(f);
  if (name === 'EAGAIN' || name === 'EOPNOTSUPP' || name === 'ENOTSUP') return -1;
  fail(f, 'preadv2', `at ${pos}`, { fd, pos });
}

// ---- syncfs ----

/**
 * syncfs(2) on a koffi worker thread: writes back the dirty pages of the filesystem holding
 * `fd`. Off the main thread because a FUSE server syncing its own mount must keep answering
 * the WRITE requests that this causes.
 */
export function syncfsAsync(fd: number): Promise<void> {
  const f = ffi();
  return new Promise((resolve, reject) => {
    f.syncfs.async(fd, (err: unknown, r: number) => {
      if (err) reject(asyncCallFailed('syncfs', err));
      else if (r !== 0) reject(VdiskError.io(`syncfs fd ${fd} failed`));
      else resolve();
    });
  });
}

// ---- sync_file_range ----

const SYNC_FILE_RANGE_WRITE = 2;

/**
 * sync_file_range(SYNC_FILE_RANGE_WRITE) on a koffi worker thread: starts writeback of the dirty
 * pages of [offset, offset+nbytes) and returns without waiting for it (src/io/write-behind.ts).
 * Off the main thread because starting writeback can wait for room in the disk's queue.
 */
export function startWriteback(fd: number, offset: number, nbytes: number): Promise<void> {
  const f = ffi();
  return new Promise((resolve, reject) => {
    f.syncFileRange.async(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE, (err: unknown, r: number) => {
      if (err) reject(asyncCallFailed('sync_file_range', err));
      else if (r !== 0) reject(VdiskError.io(`sync_file_range fd ${fd} [${offset}, +${nbytes}) failed`));
      else resolve();
    });
  });
}

// ---- lseek SEEK_DATA / SEEK_HOLE ----

const SEEK_DATA = 3;
const SEEK_HOLE = 4;

/**
 * Where the next data (or hole) of a host file starts at or after `offset`, as the file system
 * keeps it; undefined when no data follows (ENXIO). Node's fs has no SEEK_DATA.
 */
export function seekDataOrHole(fd: number, offset: number, what: 'data' | 'hole'): number | undefined {
  const f = ffi();
  const r = Number(f.lseek(fd, offset, what === 'data' ? SEEK_DATA : SEEK_HOLE));
  if (r >= 0) return r;
  if (errnoName(f) === 'ENXIO') return undefined;
  return fail(f, 'lseek', `fd ${fd} SEEK_${what.toUpperCase()} ${offset}`, { fd, offset });
}
