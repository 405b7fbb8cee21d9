/**
 * Mounting: AF_UNIX socket pairs and SCM_RIGHTS (fusermount3 hands the /dev/fuse fd back that
 * way), mount(2)/umount2(2) for root, and the uid calls that choose between the two.
 */
import { VdiskError } from '../errors';
import { errnoName, fail, ffi, type MsgHdr } from './ffi';

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
    msg_name: null,
    msg_namelen: 0,
    msg_iov: [{ iov_base: Buffer.from([0]), iov_len: 1 }],
    msg_iovlen: 1,
    msg_control: control,
    msg_controllen: CMSG_SPACE_ONE_FD,
    msg_flags: 0,
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
    msg_name: null,
    msg_namelen: 0,
    msg_iov: [{ iov_base: Buffer.alloc(1), iov_len: 1 }],
    msg_iovlen: 1,
    msg_control: control,
    msg_controllen: CMSG_SPACE_ONE_FD,
    msg_flags: 0,
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
