/** Flag constants of include/uapi/linux/fuse.h, with the header's meaning on each. */

/** fuse_init_in/out.flags (low 32 bits) and flags2 (bits 32..63, sent when INIT_EXT is set). */
export const InitFlag = {
  ASYNC_READ: 1 << 0, // asynchronous read requests (readahead in parallel)
  POSIX_LOCKS: 1 << 1,
  FILE_OPS: 1 << 2,
  ATOMIC_O_TRUNC: 1 << 3, // O_TRUNC is passed to OPEN instead of a separate SETATTR(size 0)
  EXPORT_SUPPORT: 1 << 4,
  BIG_WRITES: 1 << 5, // writes larger than 4 KiB
  DONT_MASK: 1 << 6,
  SPLICE_WRITE: 1 << 7,
  SPLICE_MOVE: 1 << 8,
  SPLICE_READ: 1 << 9,
  FLOCK_LOCKS: 1 << 10,
  HAS_IOCTL_DIR: 1 << 11,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15, // O_DIRECT requests of one file may be in flight together
  WRITEBACK_CACHE: 1 << 16, // the kernel caches writes; it owns mtime and size
  NO_OPEN_SUPPORT: 1 << 17,
  PARALLEL_DIROPS: 1 << 18, // lookups and readdirs of one folder run in parallel
  HANDLE_KILLPRIV: 1 << 19,
  POSIX_ACL: 1 << 20,
  ABORT_ERROR: 1 << 21,
  MAX_PAGES: 1 << 22, // init_out.max_pages is honoured (7.28): requests above 128 KiB
  CACHE_SYMLINKS: 1 << 23,
  NO_OPENDIR_SUPPORT: 1 << 24,
  EXPLICIT_INVAL_DATA: 1 << 25,
  MAP_ALIGNMENT: 1 << 26,
  SUBMOUNTS: 1 << 27,
  HANDLE_KILLPRIV_V2: 1 << 28,
  SETXATTR_EXT: 1 << 29,
  INIT_EXT: 1 << 30, // flags2 fields are valid (7.36)
  INIT_RESERVED: 1 << 31,
} as const;

/** fuse_init_in/out.flags2: bits 32..63 of the init flags, bit 32 as 1 << 0 (valid with INIT_EXT). */
export const InitFlag2 = {
  // FOPEN_DIRECT_IO files may be mmap'ed shared; the kernel flushes and drops their cached pages
  // around each direct read and write (7.39, Linux 6.6 as DIRECT_IO_RELAX)
  DIRECT_IO_ALLOW_MMAP: 1 << (36 - 32),
  // requests through io_uring ring queues registered after INIT (7.42, Linux 6.14; enable_uring)
  OVER_IO_URING: 1 << (41 - 32),
} as const;

const INIT_FLAG_NAMES = Object.entries<number>(InitFlag);
const INIT_FLAG2_NAMES = Object.entries<number>(InitFlag2);

/** Names of the bits set in an init flags word (and flags2), for logs and --stats. */
export function initFlagNames(flags: number, flags2 = 0): string[] {
  return [
    ...INIT_FLAG_NAMES.filter(([, bit]) => (flags & bit) !== 0).map(([name]) => name),
    ...INIT_FLAG2_NAMES.filter(([, bit]) => (flags2 & bit) !== 0).map(([name]) => name),
  ];
}

/** fuse_open_out.open_flags. */
export const OpenOutFlag = {
  DIRECT_IO: 1 << 0, // bypass the page cache for this open file
  KEEP_CACHE: 1 << 1, // don't invalidate the data cache on open
  NONSEEKABLE: 1 << 2,
  CACHE_DIR: 1 << 3,
  STREAM: 1 << 4,
  NOFLUSH: 1 << 5,
  PARALLEL_DIRECT_WRITES: 1 << 6,
} as const;

/** fuse_setattr_in.valid: which fields of the request are meaningful. */
export const SetattrValid = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

/** fuse_getattr_in.getattr_flags: fh is valid (fstat). */
export const GETATTR_FH = 1 << 0;

/** fuse_release_in.release_flags. */
export const RELEASE_FLUSH = 1 << 0;

/** fuse_fsync_in.fsync_flags: only user data (fdatasync). */
export const FSYNC_FDATASYNC = 1 << 0;

/** fuse_dirent.type: the DT_* value, i.e. (mode & S_IFMT) >> 12. */
export const DirentType = { DIR: 4, REG: 8 } as const;
