/**
 * The one module of foreign calls: the libc syscalls Node lacks, through koffi. Nothing else in
 * vdiskfs imports koffi. Linux x86_64; constants and struct layouts are the kernel's uapi headers'
 * (asm-generic/fcntl.h, linux/falloc.h, asm-generic/poll.h, bits/socket.h, linux/mount.h).
 * Every wrapper is synchronous unless its name says Async; a failure throws SyscallError.
 */
import * as fs from 'node:fs';
import type * as Koffi from 'koffi';
import { ErrorCode, VdiskError } from './errors';

// ---- errors ----

/** A failed syscall: a VdiskError whose `errno` is the name the kernel gave ("EAGAIN"). */
export class SyscallError extends VdiskError {
  constructor(readonly syscall: string, readonly errno: string, message: string, context: Record<string, unknown> = {}) {
    super(codeOf(errno), message, { ...context, syscall, errno });
    this.name = 'SyscallError';
  }
}

function codeOf(errno: string): ErrorCode {
  switch (errno) {
    case 'ENOENT': return 'ENOENT';
    case 'EINVAL': return 'EINVAL';
    case 'ENOSPC': return 'ENOSPC';
    case 'EROFS': case 'EACCES': case 'EPERM': return 'EROFS';
    case 'EOPNOTSUPP': case 'ENOSYS': case 'ENOTSUP': return 'ENOTSUP';
    case 'EAGAIN': case 'EBUSY': return 'EBUSY';
    default: return 'EIO';
  }
}

// ---- lazy loading ----

type KoffiFunction = ReturnType<Koffi.LibraryHandle['func']>;

interface Ffi {
  koffi: typeof Koffi;
  errnoNames: Map<number, string>;
  strerror: (n: number) => string;
  fcntl: KoffiFunction;
  fallocate: KoffiFunction;
  poll: KoffiFunction;
  read: (fd: number, buf: Buffer, count: number) => number;
  lseek: (fd: number, offset: number, whence: number) => number | bigint;
  syncfs: KoffiFunction;
  eventfd: (initval: number, flags: number) => number;
  socketpair: (domain: number, type: number, protocol: number, sv: Int32Array) => number;
  sendmsg: (fd: number, msg: MsgHdr, flags: number) => number;
  recvmsg: (fd: number, msg: MsgHdr, flags: number) => number;
  mount: (source: string, target: string, fstype: string, flags: number, data: string | null) => number;
  umount2: (target: string, flags: number) => number;
  getuid: () => number;
  geteuid: () => number;
  flock: Koffi.TypeObject;
}

interface MsgHdr {
  msg_name: null;
  msg_namelen: number;
  msg_iov: { iov_base: Buffer; iov_len: number }[];
  msg_iovlen: number;
  msg_control: Buffer;
  msg_controllen: number;
  msg_flags: number;
}

let loaded: Ffi | undefined;

/** Loads koffi and libc on first use, so a missing native binary costs one clear line, not a crash at import. */
function ffi(): Ffi {
  if (loaded) return loaded;
  let koffi: typeof Koffi;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    koffi = require('koffi') as typeof Koffi;
  } catch (e) {
    throw VdiskError.unsupported(`the koffi native module could not be loaded (${(e as Error).message.split('\n')[0]}); reinstall with npm ci`);
  }
  const libc = koffi.load('libc.so.6');
  // Types stay anonymous: koffi's type names are process-global, and test runners load modules twice.
  const flock = koffi.struct({ l_type: 'short', l_whence: 'short', l_start: 'int64_t', l_len: 'int64_t', l_pid: 'int32_t' });
  const iovec = koffi.struct({ iov_base: 'void *', iov_len: 'size_t' });
  const msghdr = koffi.struct({
    msg_name: 'void *', msg_namelen: 'uint32_t', msg_iov: koffi.pointer(iovec), msg_iovlen: 'size_t',
    msg_control: 'void *', msg_controllen: 'size_t', msg_flags: 'int',
  });
  const errnoNames = new Map<number, string>();
  for (const [name, n] of Object.entries(koffi.os.errno)) if (!errnoNames.has(n)) errnoNames.set(n, name);
  const strerrorC = libc.func('const char *strerror(int errnum)');
  loaded = {
    koffi,
    errnoNames,
    strerror: (n) => String(strerrorC(n)),
    // fcntl is variadic: each call names its third argument's type.
    fcntl: libc.func('int fcntl(int fd, int cmd, ...)'),
    fallocate: libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)'),
    poll: libc.func('int poll(void *fds, unsigned long nfds, int timeout)'),
    read: libc.func('intptr_t read(int fd, void *buf, size_t count)'),
    lseek: libc.func('int64_t lseek(int fd, int64_t offset, int whence)'),
    syncfs: libc.func('int syncfs(int fd)'),
    eventfd: libc.func('int eventfd(unsigned int initval, int flags)'),
    socketpair: libc.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)'),
    sendmsg: libc.func('sendmsg', 'intptr_t', ['int', koffi.pointer(msghdr), 'int']),
    recvmsg: libc.func('recvmsg', 'intptr_t', ['int', koffi.inout(koffi.pointer(msghdr)), 'int']),
    mount: libc.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)'),
    umount2: libc.func('int umount2(const char *target, int flags)'),
    getuid: libc.func('uint32_t getuid()'),
    geteuid: libc.func('uint32_t geteuid()'),
    flock,
  };
  if (koffi.sizeof(flock) !== 32 || koffi.sizeof(msghdr) !== 56) throw VdiskError.unsupported('unexpected struct layout: vdiskfs supports Linux x86_64/aarch64 only');
  return loaded;
}

/** Reads errno right after a failed call (koffi keeps the value the call left) and throws. */
function fail(f: Ffi, syscall: string, what: string, context: Record<string, unknown> = {}): never {
  const n = f.koffi.errno();
  const name = f.errnoNames.get(n) ?? `errno ${n}`;
  throw new SyscallError(syscall, name, `${syscall} ${what}: ${name} (${f.strerror(n)})`, context);
}

function errnoName(f: Ffi): string {
  return f.errnoNames.get(f.koffi.errno()) ?? 'EIO';
}

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
  if (f.fallocate(fd, mode, offset, length) !== 0) fail(f, 'fallocate', `fd ${fd} mode 0x${mode.toString(16)} [${offset}, +${length})`, { fd, mode, offset, length });
}

// ---- poll ----

export const POLLIN = 0x001;
export const POLLPRI = 0x002;
export const POLLOUT = 0x004;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const POLLNVAL = 0x020;

export interface PollFd {
  fd: number;
  events: number;
}

const POLLFD_SIZE = 8; // struct pollfd { int fd; short events; short revents; }

function pollBuffer(fds: PollFd[]): Buffer {
  const buf = Buffer.alloc(POLLFD_SIZE * fds.length);
  fds.forEach((p, i) => {
    buf.writeInt32LE(p.fd, i * POLLFD_SIZE);
    buf.writeInt16LE(p.events, i * POLLFD_SIZE + 4);
  });
  return buf;
}

const revents = (buf: Buffer, n: number): number[] => Array.from({ length: n }, (_, i) => buf.readUInt16LE(i * POLLFD_SIZE + 6));

/** Waits up to timeoutMs (-1: forever) for events; returns each fd's revents (all 0 on timeout). EINTR is retried. */
export function poll(fds: PollFd[], timeoutMs: number): number[] {
  const f = ffi();
  const buf = pollBuffer(fds);
  for (;;) {
    if (f.poll(buf, fds.length, timeoutMs) >= 0) return revents(buf, fds.length);
    if (errnoName(f) !== 'EINTR') fail(f, 'poll', `${fds.length} fds`, { fds: fds.map((p) => p.fd) });
  }
}

/** poll() on one of koffi's worker threads, for a caller whose event loop must keep running meanwhile. */
export function pollAsync(fds: PollFd[], timeoutMs: number): Promise<number[]> {
  const f = ffi();
  const buf = pollBuffer(fds);
  return new Promise((resolve, reject) => {
    f.poll.async(buf, fds.length, timeoutMs, (err: unknown, r: number) => {
      if (err) return reject(VdiskError.io(`poll: ${String(err)}`));
      if (r >= 0) return resolve(revents(buf, fds.length));
      // errno lives on the worker thread: ask again without waiting, here, to learn why (EINTR won't repeat).
      try {
        resolve(poll(fds, 0));
      } catch (e) {
        reject(e);
      }
    });
  });
}

/**
 * A fixed set of fds polled again and again (a request loop): the pollfd array is built once,
 * and no array is allocated per call. revents(i) reads what the last wait found.
 */
export class PollSet {
  private readonly buf: Buffer;

  constructor(readonly fds: readonly PollFd[]) {
    this.buf = pollBuffer([...fds]);
  }

  /** Waits up to timeoutMs; returns how many fds have events (0 on timeout or EINTR: the caller looks again). */
  wait(timeoutMs: number): number {
    const f = ffi();
    const n = f.poll(this.buf, this.fds.length, timeoutMs) as number;
    if (n >= 0) return n;
    if (errnoName(f) === 'EINTR') return 0;
    return fail(f, 'poll', `${this.fds.length} fds`);
  }

  /** wait() on one of koffi's worker threads: the event loop keeps running meanwhile. */
  waitAsync(timeoutMs: number): Promise<number> {
    const f = ffi();
    return new Promise((resolve, reject) => {
      f.poll.async(this.buf, this.fds.length, timeoutMs, (err: unknown, n: number) => {
        if (err) reject(VdiskError.io(`poll: ${String(err)}`));
        else resolve(Math.max(0, n)); // -1: EINTR on the worker (or worse): the caller looks again
      });
    });
  }

  revents(i: number): number {
    return this.buf.readUInt16LE(i * POLLFD_SIZE + 6);
  }
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
      if (err) reject(VdiskError.io(`syncfs: ${String(err)}`));
      else if (r !== 0) reject(VdiskError.io(`syncfs fd ${fd} failed`));
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

// ---- eventfd ----

export const EFD_SEMAPHORE = 0x1;
export const EFD_NONBLOCK = 0x800;
export const EFD_CLOEXEC = 0x80000;

export function eventfd(initval: number, flags: number): number {
  const f = ffi();
  const fd = f.eventfd(initval, flags);
  if (fd < 0) fail(f, 'eventfd', `initval ${initval}`, { flags });
  return fd;
}

/** Adds n to the eventfd's counter. */
export function eventfdWrite(fd: number, n: number): void {
  const buf = Buffer.alloc(8);
  buf.writeBigUInt64LE(BigInt(n));
  fs.writeSync(fd, buf, 0, 8);
}

/** Reads and resets the counter (EFD_SEMAPHORE: takes 1). Returns 0 when a non-blocking eventfd is at zero. */
export function eventfdRead(fd: number): number {
  const buf = Buffer.alloc(8);
  try {
    fs.readSync(fd, buf, 0, 8, null);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return 0;
    throw e;
  }
  return Number(buf.readBigUInt64LE());
}

// ---- Unix sockets and SCM_RIGHTS ----

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0x80000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_NOSIGNAL = 0x4000;
const MSG_CTRUNC = 0x8;
const MSG_CMSG_CLOEXEC = 0x40000000;
// struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } then the data, 8-byte aligned.
const CMSG_HDR = 16;
const CMSG_LEN_ONE_FD = CMSG_HDR + 4;
const CMSG_SPACE_ONE_FD = CMSG_HDR + 8;

/** A connected AF_UNIX stream pair, close-on-exec unless asked (a child that must inherit one gets it dup'ed by spawn's stdio). */
export function socketpair(opts: { cloexec?: boolean } = {}): [number, number] {
  const f = ffi();
  const sv = new Int32Array(2);
  if (f.socketpair(AF_UNIX, SOCK_STREAM | (opts.cloexec === false ? 0 : SOCK_CLOEXEC), 0, sv) !== 0) fail(f, 'socketpair', 'AF_UNIX');
  return [sv[0]!, sv[1]!];
}

/** Sends `fd` over a Unix socket with one data byte (as fusermount3 does). */
export function sendFd(socketFd: number, fd: number): void {
  const f = ffi();
  const control = Buffer.alloc(CMSG_SPACE_ONE_FD);
  control.writeBigUInt64LE(BigInt(CMSG_LEN_ONE_FD), 0);
  control.writeInt32LE(SOL_SOCKET, 8);
  control.writeInt32LE(SCM_RIGHTS, 12);
  control.writeInt32LE(fd, CMSG_HDR);
  const msg: MsgHdr = {
    msg_name: null, msg_namelen: 0, msg_iov: [{ iov_base: Buffer.from([0]), iov_len: 1 }], msg_iovlen: 1,
    msg_control: control, msg_controllen: CMSG_SPACE_ONE_FD, msg_flags: 0,
  };
  for (;;) {
    if (f.sendmsg(socketFd, msg, MSG_NOSIGNAL) >= 0) return;
    if (errnoName(f) !== 'EINTR') fail(f, 'sendmsg', `fd ${fd} over socket ${socketFd}`, { socketFd, fd });
  }
}

/** Receives one file descriptor (SCM_RIGHTS) from a Unix socket, close-on-exec; blocks until it comes. */
export function recvFd(socketFd: number): number {
  const f = ffi();
  const control = Buffer.alloc(CMSG_SPACE_ONE_FD);
  const msg: MsgHdr = {
    msg_name: null, msg_namelen: 0, msg_iov: [{ iov_base: Buffer.alloc(1), iov_len: 1 }], msg_iovlen: 1,
    msg_control: control, msg_controllen: CMSG_SPACE_ONE_FD, msg_flags: 0,
  };
  let n: number;
  for (;;) {
    n = f.recvmsg(socketFd, msg, MSG_CMSG_CLOEXEC);
    if (n >= 0) break;
    if (errnoName(f) !== 'EINTR') fail(f, 'recvmsg', `socket ${socketFd}`, { socketFd });
  }
  if (n === 0) throw VdiskError.io(`recvmsg socket ${socketFd}: closed before a file descriptor came`, { socketFd });
  if (msg.msg_flags & MSG_CTRUNC) throw VdiskError.io(`recvmsg socket ${socketFd}: control message truncated`, { socketFd });
  const ok = msg.msg_controllen >= CMSG_LEN_ONE_FD && control.readInt32LE(8) === SOL_SOCKET && control.readInt32LE(12) === SCM_RIGHTS;
  if (!ok) throw VdiskError.io(`recvmsg socket ${socketFd}: message carried no file descriptor`, { socketFd });
  return control.readInt32LE(CMSG_HDR);
}

// ---- mount ----

export const MS_RDONLY = 0x1;
export const MS_NOSUID = 0x2;
export const MS_NODEV = 0x4;
export const MS_NOEXEC = 0x8;
export const MNT_FORCE = 0x1;
export const MNT_DETACH = 0x2;

export function mount(source: string, target: string, fstype: string, flags: number, data: string | null): void {
  const f = ffi();
  if (f.mount(source, target, fstype, flags, data) !== 0) fail(f, 'mount', `${fstype} on ${target}`, { source, target, fstype, flags });
}

export function umount2(target: string, flags: number): void {
  const f = ffi();
  if (f.umount2(target, flags) !== 0) fail(f, 'umount2', target, { target, flags });
}

export const getuid = (): number => ffi().getuid();
export const geteuid = (): number => ffi().geteuid();
