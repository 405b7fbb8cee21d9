import { spawn } from 'node:child_process';
import fs from 'node:fs';
import createDebug from 'debug';
import { VdiskError } from '../../io/errors';
import { SyscallError } from '../../io/syscalls/ffi';
import {
  geteuid,
  getuid,
  mount as mountSyscall,
  MS_NODEV,
  MS_NOEXEC,
  MS_NOSUID,
  MS_RDONLY,
  recvFd,
  socketpair,
} from '../../io/syscalls/sockets';
import type { FuseMountOptions } from '../mount-options';

const log = createDebug('vdiskfs:fuse');

/** Mount type and source as mountinfo shows them (`fuse.vdiskfs`, `vdiskfs`). */
export const FS_TYPE = 'fuse.vdiskfs';
export const FS_SOURCE = 'vdiskfs';

/** /dev/fuse is character device 10:229 (makedev as glibc encodes small numbers). */
const FUSE_DEV = (10 << 8) | 229;
const MS_NOATIME = 1024;
const MS_NODIRATIME = 2048;
const MS_RELATIME = 1 << 21;
const FLAG_OF: Record<string, number> = {
  nosuid: MS_NOSUID,
  nodev: MS_NODEV,
  noexec: MS_NOEXEC,
  noatime: MS_NOATIME,
  nodiratime: MS_NODIRATIME,
  relatime: MS_RELATIME,
};

export interface KernelMount {
  /** The /dev/fuse connection: requests are read from it, replies written to it. */
  fd: number;
  /** Mounted by mount(2) as root, or by fusermount3 for a user. */
  privileged: boolean;
}

/**
 * Mounts a FUSE filesystem on `mountpoint` and returns its /dev/fuse fd. Root opens /dev/fuse and
 * calls mount(2) itself: no helper, and each failure has its errno. Other users go through
 * fusermount3 (setuid), which mounts and hands the fd back over a socket (SCM_RIGHTS).
 */
export async function mountKernel(mountpoint: string, o: FuseMountOptions): Promise<KernelMount> {
  if (geteuid() === 0) return { fd: mountPrivileged(mountpoint, o), privileged: true };
  return { fd: await mountWithFusermount(mountpoint, o), privileged: false };
}

function mountPrivileged(mountpoint: string, o: FuseMountOptions): number {
  let fd: number;
  try {
    fd = fs.openSync('/dev/fuse', fs.constants.O_RDWR);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENODEV' || code === 'ENXIO')
      throw new VdiskError('ENOENT', '/dev/fuse is missing (modprobe fuse, or run the container with --device /dev/fuse)');
    throw new VdiskError('EROFS', `cannot open /dev/fuse: ${(e as Error).message}`);
  }
  const st = fs.fstatSync(fd);
  if (!st.isCharacterDevice() || st.rdev !== FUSE_DEV) {
    fs.closeSync(fd);
    throw new VdiskError('ENOENT', '/dev/fuse is not the FUSE device (modprobe fuse, or run the container with --device /dev/fuse)');
  }
  let flags = MS_NOSUID | MS_NODEV; // as fusermount3 always does
  if (o.readOnly) flags |= MS_RDONLY;
  for (const g of o.generic) flags |= FLAG_OF[g] ?? 0;
  if (o.generic.includes('suid')) flags &= ~MS_NOSUID;
  if (o.generic.includes('dev')) flags &= ~MS_NODEV;
  const data = [
    `fd=${fd}`,
    'rootmode=40000',
    `user_id=${getuid()}`,
    `group_id=${process.getgid?.() ?? 0}`,
    'default_permissions',
    ...(o.allowOther ? ['allow_other'] : []),
  ].join(',');
  try {
    mountSyscall(FS_SOURCE, mountpoint, FS_TYPE, flags, data);
  } catch (e) {
    fs.closeSync(fd);
    throw mountError(mountpoint, e);
  }
  log('mounted %s with mount(2): %s', mountpoint, data);
  return fd;
}

function mountError(mountpoint: string, e: unknown): VdiskError {
  const errno = e instanceof SyscallError ? e.errno : '';
  switch (errno) {
    case 'EPERM':
      return new VdiskError('EROFS', `cannot mount on ${mountpoint}: no permission (EPERM; in a container, CAP_SYS_ADMIN is needed)`);
    case 'ENODEV':
      return new VdiskError('ENOENT', `cannot mount on ${mountpoint}: the kernel has no FUSE filesystem (modprobe fuse)`);
    case 'ENOENT':
      return new VdiskError('ENOENT', `cannot mount on ${mountpoint}: it does not exist`);
    case 'ENOTDIR':
      return VdiskError.invalid(`cannot mount on ${mountpoint}: not a folder`);
    case 'EINVAL':
      return VdiskError.invalid(`cannot mount on ${mountpoint}: the kernel refused the mount options`);
    default:
      return VdiskError.io(`cannot mount on ${mountpoint}: ${(e as Error).message}`);
  }
}

/** fusermount3 -o OPTS -- MOUNTPOINT, with _FUSE_COMMFD naming the socket it sends the fd over. */
async function mountWithFusermount(mountpoint: string, o: FuseMountOptions): Promise<number> {
  const opts = [
    'default_permissions',
    `fsname=${FS_SOURCE}`,
    'subtype=vdiskfs',
    ...(o.allowOther ? ['allow_other'] : []),
    ...(o.readOnly ? ['ro'] : []),
    ...o.generic,
  ];
  const [ours, theirs] = socketpair();
  let stderr = '';
  const code = await new Promise<number | string>((resolve) => {
    const child = spawn('fusermount3', ['-o', opts.join(','), '--', mountpoint], {
      stdio: ['ignore', 'ignore', 'pipe', theirs],
      env: { ...process.env, _FUSE_COMMFD: '3' },
    });
    child.stderr!.on('data', (d) => (stderr += d));
    child.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ENOENT' ? 'missing' : e.message));
    child.once('close', (c) => resolve(c ?? -1));
  });
  fs.closeSync(theirs);
  try {
    if (code === 'missing')
      throw new VdiskError('ENOENT', 'fusermount3 is not installed (apt-get install fuse3): a user who is not root needs it to mount');
    if (code !== 0) {
      const why =
        stderr
          .trim()
          .split('\n')
          .pop()
          ?.replace(/^fusermount3?: /, '') || `fusermount3 exited with ${code}`;
      const hint = /\/dev\/fuse: Permission denied/.test(why)
        ? ' (users need /dev/fuse read-write: chmod 0666 /dev/fuse, as distributions ship it)'
        : '';
      throw new VdiskError('EROFS', `cannot mount on ${mountpoint}: ${why}${hint}`);
    }
    // fusermount3 has exited: the fd is already queued on the socket, so this does not block.
    const fd = recvFd(ours);
    log('mounted %s with fusermount3 -o %s', mountpoint, opts.join(','));
    return fd;
  } finally {
    fs.closeSync(ours);
  }
}
