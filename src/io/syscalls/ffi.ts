/**
 * The foreign-call core of src/io/syscalls/: koffi and libc loaded on first use, the declared
 * libc functions, and how a failed call becomes a SyscallError. The only file in vdiskfs that
 * imports koffi; the wrappers beside it (files.ts, poll.ts, sockets.ts) are the only callers.
 * Linux x86_64/aarch64; constants and struct layouts are the kernel's uapi headers'.
 */
import { inspect } from 'node:util';
import type * as Koffi from 'koffi';
import { ErrorCode, VdiskError } from '../errors';

// ---- errors ----

/** A failed syscall: a VdiskError whose `errno` is the name the kernel gave ("EAGAIN"). */
export class SyscallError extends VdiskError {
  constructor(
    readonly syscall: string,
    readonly errno: string,
    message: string,
    context: Record<string, unknown> = {},
  ) {
    super(codeOf(errno), message, { ...context, syscall, errno });
    this.name = 'SyscallError';
  }
}

function codeOf(errno: string): ErrorCode {
  switch (errno) {
    case 'ENOENT':
      return 'ENOENT';
    case 'EINVAL':
      return 'EINVAL';
    case 'ENOSPC':
      return 'ENOSPC';
    case 'EROFS':
    case 'EACCES':
    case 'EPERM':
      return 'EROFS';
    case 'EOPNOTSUPP':
    case 'ENOSYS':
    case 'ENOTSUP':
      return 'ENOTSUP';
    case 'EAGAIN':
    case 'EBUSY':
      return 'EBUSY';
    default:
      return 'EIO';
  }
}

// ---- lazy loading ----

type KoffiFunction = ReturnType<Koffi.LibraryHandle['func']>;

export interface Ffi {
  koffi: typeof Koffi;
  errnoNames: Map<number, string>;
  strerror: (n: number) => string;
  fcntl: KoffiFunction;
  fallocate: KoffiFunction;
  poll: KoffiFunction;
  read: (fd: number, buf: Buffer, count: number) => number;
  write: (fd: number, buf: Buffer, count: number) => number;
  pread: (fd: number, buf: Buffer, count: number, offset: number) => number;
  pwrite: (fd: number, buf: Buffer, count: number, offset: number) => number;
  preadv2: (fd: number, iov: { iov_base: Buffer; iov_len: number }[], iovcnt: number, offset: number, flags: number) => number;
  lseek: (fd: number, offset: number, whence: number) => number | bigint;
  syncfs: KoffiFunction;
  syncFileRange: KoffiFunction;
  eventfd: (initval: number, flags: number) => number;
  socketpair: (domain: number, type: number, protocol: number, sv: Int32Array) => number;
  sendmsg: (fd: number, msg: MsgHdr, flags: number) => number;
  recvmsg: (fd: number, msg: MsgHdr, flags: number) => number;
  mount: (source: string, target: string, fstype: string, flags: number, data: string | null) => number;
  umount2: (target: string, flags: number) => number;
  getuid: () => number;
  geteuid: () => number;
  /** syscall(2), for calls glibc does not wrap (io_uring): each call names its arguments' types. */
  syscall: KoffiFunction;
  mmap: (addr: null, length: number, prot: number, flags: number, fd: number, offset: number) => unknown;
  munmap: (addr: unknown, length: number) => number;
  execve: (path: string, argv: (string | null)[], envp: (string | null)[]) => number;
  flock: Koffi.TypeObject;
}

export interface MsgHdr {
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
export function ffi(): Ffi {
  if (loaded) return loaded;
  let koffi: typeof Koffi;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    koffi = require('koffi') as typeof Koffi;
  } catch (e) {
    throw VdiskError.unsupported(
      `the koffi native module could not be loaded (${(e as Error).message.split('\n')[0]}); reinstall with npm ci`,
    );
  }
  const libc = koffi.load('libc.so.6');
  // Types stay anonymous: koffi's type names are process-global, and test runners load modules twice.
  const flock = koffi.struct({ l_type: 'short', l_whence: 'short', l_start: 'int64_t', l_len: 'int64_t', l_pid: 'int32_t' });
  const iovec = koffi.struct({ iov_base: 'void *', iov_len: 'size_t' });
  const msghdr = koffi.struct({
    msg_name: 'void *',
    msg_namelen: 'uint32_t',
    msg_iov: koffi.pointer(iovec),
    msg_iovlen: 'size_t',
    msg_control: 'void *',
    msg_controllen: 'size_t',
    msg_flags: 'int',
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
    write: libc.func('intptr_t write(int fd, const void *buf, size_t count)'),
    pread: libc.func('intptr_t pread(int fd, void *buf, size_t count, int64_t offset)'),
    pwrite: libc.func('intptr_t pwrite(int fd, const void *buf, size_t count, int64_t offset)'),
    lseek: libc.func('int64_t lseek(int fd, int64_t offset, int whence)'),
    preadv2: libc.func('preadv2', 'intptr_t', ['int', koffi.pointer(iovec), 'int', 'int64_t', 'int']),
    syncfs: libc.func('int syncfs(int fd)'),
    syncFileRange: libc.func('int sync_file_range(int fd, int64_t offset, int64_t nbytes, unsigned int flags)'),
    eventfd: libc.func('int eventfd(unsigned int initval, int flags)'),
    socketpair: libc.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)'),
    sendmsg: libc.func('sendmsg', 'intptr_t', ['int', koffi.pointer(msghdr), 'int']),
    recvmsg: libc.func('recvmsg', 'intptr_t', ['int', koffi.inout(koffi.pointer(msghdr)), 'int']),
    mount: libc.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)'),
    umount2: libc.func('int umount2(const char *target, int flags)'),
    getuid: libc.func('uint32_t getuid()'),
    geteuid: libc.func('uint32_t geteuid()'),
    syscall: libc.func('long syscall(long number, ...)'),
    mmap: libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)'),
    munmap: libc.func('int munmap(void *addr, size_t length)'),
    execve: libc.func('int execve(const char *path, const char **argv, const char **envp)'),
    flock,
  };
  if (koffi.sizeof(flock) !== 32 || koffi.sizeof(msghdr) !== 56)
    throw VdiskError.unsupported('unexpected struct layout: vdiskfs supports Linux x86_64/aarch64 only');
  return loaded;
}

/** Reads errno right after a failed call (koffi keeps the value the call left) and throws. */
export function fail(f: Ffi, syscall: string, what: string, context: Record<string, unknown> = {}): never {
  const n = f.koffi.errno();
  const name = f.errnoNames.get(n) ?? `errno ${n}`;
  throw new SyscallError(syscall, name, `${syscall} ${what}: ${name} (${f.strerror(n)})`, context);
}

export function errnoName(f: Ffi): string {
  return f.errnoNames.get(f.koffi.errno()) ?? 'EIO';
}

/** The error a koffi worker-thread call (fn.async) hands its callback, as one line. */
export function asyncCallFailed(syscall: string, err: unknown): VdiskError {
  return VdiskError.io(`${syscall}: ${err instanceof Error ? err.message : inspect(err)}`);
}
