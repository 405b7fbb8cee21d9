/**
 * The one error type of vdiskfs. Every layer throws it with an errno-like `code`;
 * only the FUSE adapter (src/fs) turns codes into negative errno values, and only the
 * CLI turns them into one-line messages.
 */
import { inspect } from 'node:util';
export type ErrorCode =
  | 'EIO' // host I/O failed, or a deferred write failed earlier
  | 'EROFS' // image (or view) is read-only
  | 'EINVAL' // bad argument: offset, size, option
  | 'ENOENT' // file not found
  | 'ENOSPC' // image cannot grow further (format limit)
  | 'EFBIG' // request past the end of the virtual disk
  | 'ENOTSUP' // valid image using a feature we do not implement
  | 'ECORRUPT' // image structure is inconsistent / hostile
  | 'EBUSY' // image in use (locked by another writer)
  | 'EBADF' // no such open handle, or a handle not open for writing
  | 'EISDIR' // a file operation on a folder
  | 'ENXIO' // SEEK_DATA/SEEK_HOLE at or past the end of the disk
  | 'EACCES'; // an image names a file it may not reach (outside its folder, not a regular file)

export class VdiskError extends Error {
  readonly code: ErrorCode;
  /** Where it happened: file path, offset, table index ... shown in logs. */
  readonly context: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, context: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VdiskError';
    this.code = code;
    this.context = context;
  }

  static io(message: string, context?: Record<string, unknown>, cause?: unknown): VdiskError {
    return new VdiskError('EIO', message, context, { cause });
  }
  static readOnly(message: string, context?: Record<string, unknown>): VdiskError {
    return new VdiskError('EROFS', message, context);
  }
  static invalid(message: string, context?: Record<string, unknown>): VdiskError {
    return new VdiskError('EINVAL', message, context);
  }
  static unsupported(message: string, context?: Record<string, unknown>): VdiskError {
    return new VdiskError('ENOTSUP', message, context);
  }
  static corrupt(message: string, context?: Record<string, unknown>): VdiskError {
    return new VdiskError('ECORRUPT', message, context);
  }
  static noSpace(message: string, context?: Record<string, unknown>): VdiskError {
    return new VdiskError('ENOSPC', message, context);
  }
}

export function isVdiskError(e: unknown): e is VdiskError {
  return e instanceof VdiskError;
}

/** Node's fs errors carry a string code; keep it when wrapping. */
export function fromNodeError(e: unknown, what: string, context: Record<string, unknown> = {}): VdiskError {
  if (e instanceof VdiskError) return e;
  const code = (e as NodeJS.ErrnoException)?.code;
  const msg = (e as Error)?.message ?? String(e);
  if (code === 'ENOENT') return new VdiskError('ENOENT', `${what}: ${msg}`, context, { cause: e });
  if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM') return new VdiskError('EROFS', `${what}: ${msg}`, context, { cause: e });
  if (code === 'ENOSPC') return new VdiskError('ENOSPC', `${what}: ${msg}`, context, { cause: e });
  return new VdiskError('EIO', `${what}: ${msg}`, context, { cause: e });
}

/** A caught value as an Error (everything vdiskfs throws is one; this keeps a stray value readable). */
export function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(inspect(e));
}

/**
 * Calls `fn` and returns its promise; a synchronous throw becomes a rejection. The transports
 * answer every request from one promise, whether the core failed at once or later.
 */
export function settle<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return fn();
  } catch (e) {
    return Promise.reject(asError(e));
  }
}
