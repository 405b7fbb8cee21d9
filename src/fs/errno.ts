import { isVdiskError, type ErrorCode } from '../io/errors';

/** Linux errno values, negated as FUSE wants them. Only this layer speaks errno. */
const ERRNO: Record<ErrorCode | 'EACCES' | 'ENOTDIR' | 'EPERM' | 'ENOSYS', number> = {
  EIO: 5,
  EROFS: 30,
  EINVAL: 22,
  ENOENT: 2,
  ENOSPC: 28,
  EFBIG: 27,
  ENOTSUP: 95,
  ECORRUPT: 5, // a corrupt image is an I/O error to the reader
  EBUSY: 16,
  EACCES: 13,
  EISDIR: 21,
  ENOTDIR: 20,
  EPERM: 1,
  EBADF: 9,
  ENXIO: 6,
  ENOSYS: 38,
};

export function errno(code: keyof typeof ERRNO): number {
  return -ERRNO[code];
}

/** Any thrown value → negative errno; unknown errors are EIO (and get logged by the caller). */
export function toErrno(e: unknown): number {
  if (isVdiskError(e)) return -ERRNO[e.code];
  const code = (e as NodeJS.ErrnoException)?.code;
  if (typeof code === 'string' && code in ERRNO) return -ERRNO[code as keyof typeof ERRNO];
  return -ERRNO.EIO;
}
