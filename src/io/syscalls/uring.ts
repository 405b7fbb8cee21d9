/**
 * io_uring (include/uapi/linux/io_uring.h), the little of it FUSE over io_uring needs: a ring
 * with 128-byte SQEs, its shared memory mapped into views JavaScript reads and writes directly,
 * and io_uring_enter to submit. glibc has no wrappers: syscall(2) with the x86_64/aarch64 numbers
 * (the same on both: the generic table).
 */
import { VdiskError } from '../errors';
import { fail, ffi } from './ffi';

const SYS_IO_URING_SETUP = 425;
const SYS_IO_URING_ENTER = 426;
const SYS_IO_URING_REGISTER = 427;
const IORING_REGISTER_EVENTFD = 4;

export const IORING_SETUP_SQE128 = 1 << 10;
/** Completion work runs only when this task asks (io_uring_enter with GETEVENTS): no interrupt of a busy loop. */
export const IORING_SETUP_COOP_TASKRUN = 1 << 8;
/** The kernel sets IORING_SQ_TASKRUN in the SQ flags while such work waits. */
export const IORING_SETUP_TASKRUN_FLAG = 1 << 9;
export const IORING_SETUP_SINGLE_ISSUER = 1 << 12;
/** Completion work deferred to this task's next io_uring_enter with GETEVENTS (Linux 6.1+). */
export const IORING_SETUP_DEFER_TASKRUN = 1 << 13;
export const IORING_SQ_TASKRUN = 1 << 1;
export const IORING_ENTER_GETEVENTS = 1 << 0;
export const IORING_FEAT_SINGLE_MMAP = 1 << 0;
export const IORING_OFF_SQ_RING = 0;
export const IORING_OFF_SQES = 0x10000000;

const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
const MAP_POPULATE = 0x8000;

/** struct io_uring_params: 120 bytes; the offsets the kernel fills in name where each ring field lives. */
export const PARAMS_SIZE = 120;

export interface UringParams {
  sqEntries: number;
  cqEntries: number;
  features: number;
  sq: { head: number; tail: number; ringMask: number; ringEntries: number; flags: number; array: number };
  cq: { head: number; tail: number; ringMask: number; ringEntries: number; overflow: number; cqes: number };
}

/** io_uring_setup(2): a new ring of `entries` submissions; its fd and where its fields are. */
export function ioUringSetup(entries: number, flags: number): { fd: number; params: UringParams } {
  const f = ffi();
  const p = Buffer.alloc(PARAMS_SIZE);
  p.writeUInt32LE(flags >>> 0, 8);
  const fd = Number(f.syscall(SYS_IO_URING_SETUP, 'uint32_t', entries, 'void *', p));
  if (fd < 0) fail(f, 'io_uring_setup', `${entries} entries`, { entries, flags });
  const u = (o: number) => p.readUInt32LE(o);
  return {
    fd,
    params: {
      sqEntries: u(0),
      cqEntries: u(4),
      features: u(20),
      sq: { head: u(40), tail: u(44), ringMask: u(48), ringEntries: u(52), flags: u(56), array: u(64) },
      cq: { head: u(80), tail: u(84), ringMask: u(88), ringEntries: u(92), overflow: u(96), cqes: u(100) },
    },
  };
}

/**
 * io_uring_enter(2): submits `toSubmit` entries, waiting for `minComplete` completions when
 * flags has IORING_ENTER_GETEVENTS. Returns how many were submitted, or -errno for EINTR,
 * EAGAIN and EBUSY (the caller tries again); other failures throw.
 */
export function ioUringEnter(fd: number, toSubmit: number, minComplete: number, flags: number): number {
  const f = ffi();
  const r = Number(
    f.syscall(SYS_IO_URING_ENTER, 'int', fd, 'uint32_t', toSubmit, 'uint32_t', minComplete, 'uint32_t', flags, 'void *', null, 'size_t', 0),
  );
  if (r >= 0) return r;
  const n = f.koffi.errno();
  const name = f.errnoNames.get(n);
  if (name === 'EINTR' || name === 'EAGAIN' || name === 'EBUSY') return -n;
  return fail(f, 'io_uring_enter', `fd ${fd} submit ${toSubmit}`, { fd, toSubmit, minComplete, flags });
}

/** Has the ring signal `eventfd` when completion work arrives (a sleeping loop polls it). */
export function ioUringRegisterEventfd(fd: number, eventfd: number): void {
  const f = ffi();
  const arg = new Int32Array([eventfd]);
  if (Number(f.syscall(SYS_IO_URING_REGISTER, 'int', fd, 'uint32_t', IORING_REGISTER_EVENTFD, 'void *', arg, 'uint32_t', 1)) < 0)
    fail(f, 'io_uring_register', `EVENTFD on fd ${fd}`, { fd, eventfd });
}

/** A shared mapping of ring memory, and a view of it that JavaScript reads and writes in place. */
export interface SharedMapping {
  readonly view: ArrayBuffer;
  readonly length: number;
  /** The address, for munmap. */
  readonly ptr: unknown;
}

/** mmap(2) of `length` bytes of `fd` at `offset`, shared, read-write, populated. */
export function mapShared(fd: number, length: number, offset: number): SharedMapping {
  const f = ffi();
  const ptr = f.mmap(null, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, offset);
  if (f.koffi.address(ptr) === BigInt(-1) || f.koffi.address(ptr) === 2n ** 64n - 1n)
    fail(f, 'mmap', `fd ${fd} ${length} bytes at ${offset}`, { fd });
  return { view: f.koffi.view(ptr, length), length, ptr };
}

export function unmap(m: SharedMapping): void {
  const f = ffi();
  if (f.munmap(m.ptr, m.length) !== 0) fail(f, 'munmap', `${m.length} bytes`);
}

/**
 * The address of a Buffer's bytes, for structures the kernel reads pointers from (an iovec in
 * an SQE). The Buffer must stay alive and unmoved: allocate it with Buffer.allocUnsafeSlow and
 * keep a reference for as long as the kernel may use it (V8 never moves such a backing store).
 */
export function addressOf(buf: Buffer): bigint {
  const f = ffi();
  const a = f.koffi.address(buf);
  if (typeof a !== 'bigint') throw VdiskError.io('koffi.address gave no address for a Buffer');
  return a;
}
