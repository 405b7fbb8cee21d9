import { inspect } from 'node:util';
import createDebug from 'debug';
import { isVdiskError } from '../io/errors';

/** Warnings and errors: one line each, prefixed like any Unix tool. */
export function warn(message: string): void {
  process.stderr.write(`vdiskfs: ${message}\n`);
}

export function enableDebug(): void {
  createDebug.enable([process.env.DEBUG, 'vdiskfs:*'].filter(Boolean).join(','));
}

/**
 * A user mistake or an expected failure is one clear line; an unexpected bug also stays one
 * line unless --debug / DEBUG asks for the stack.
 */
export function reportFatal(e: unknown): number {
  const debugging = createDebug.enabled('vdiskfs:cli');
  if (isVdiskError(e)) {
    warn(e.message);
    if (debugging && e.cause) process.stderr.write(`${e.cause instanceof Error ? (e.cause.stack ?? e.cause.message) : inspect(e.cause)}\n`);
  } else if (isHostError(e)) {
    // The system refused a file operation (missing file, no permission, a folder, a full disk):
    // that is the user's situation to fix, not a bug in vdiskfs.
    warn(hostErrorLine(e));
    if (debugging) process.stderr.write(`${e.stack ?? ''}\n`);
  } else {
    warn(`${(e as Error)?.message ?? e}`);
    if (debugging) process.stderr.write(`${(e as Error)?.stack ?? ''}\n`);
    else process.stderr.write('vdiskfs: (this looks like a bug; run with --debug for details)\n');
  }
  return 1;
}

const HOST_ERRNOS: Record<string, string> = {
  ENOENT: 'no such file or folder',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EISDIR: 'is a folder',
  ENOTDIR: 'not a folder',
  EROFS: 'read-only file system',
  ENOSPC: 'no space left on device',
  EEXIST: 'already exists',
  ELOOP: 'too many symbolic links',
  ENAMETOOLONG: 'name too long',
  EBUSY: 'busy',
  EDQUOT: 'disk quota exceeded',
  EMFILE: 'too many open files',
  ENXIO: 'no such device',
  ENODEV: 'no such device',
  ETXTBSY: 'text file busy',
  EFBIG: 'file too large',
  EINVAL: 'invalid argument',
};

function isHostError(e: unknown): e is NodeJS.ErrnoException {
  const code = (e as NodeJS.ErrnoException)?.code;
  return e instanceof Error && typeof code === 'string' && code in HOST_ERRNOS;
}

/** `nope.qcow2: no such file or folder (ENOENT)`: the path the system named, then what went wrong. */
function hostErrorLine(e: NodeJS.ErrnoException): string {
  const what = HOST_ERRNOS[e.code!]!;
  return e.path ? `${e.path}: ${what} (${e.code})` : `${e.syscall ? `${e.syscall}: ` : ''}${what} (${e.code})`;
}
