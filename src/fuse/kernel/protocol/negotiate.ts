import { InitFlag, InitFlag2 } from './flags';
import type { InitIn, InitOut } from './init';

/**
 * The newest protocol minor whose semantics this server implements: 7.39, for
 * DIRECT_IO_ALLOW_MMAP. What 7.32-7.39 added is either a flag that stays off unless we ask
 * (SUBMOUNTS, HANDLE_KILLPRIV_V2, SETXATTR_EXT, SECURITY_CTX, EXPIRE_ONLY...), a field that
 * was padding and that we leave zero (fuse_attr.flags, fuse_open_in.open_flags), or a request
 * the kernel tries once and stops sending when answered ENOSYS (SYNCFS, TMPFILE, STATX, which
 * falls back to GETATTR). The kernel itself branches on the minor only below 7.23.
 */
export const OUR_MINOR = 39;
/** Oldest kernel protocol we speak: 7.12 (Linux 2.6.29) has the struct sizes used here. */
export const MIN_MINOR = 12;
const PAGE = 4096;
/** Largest request with MAX_PAGES: 1 MiB (256 pages); without it the kernel caps at 32 pages. */
export const MAX_WRITE = 1 << 20;
const MAX_PAGES = MAX_WRITE / PAGE;
const LEGACY_MAX_WRITE = 32 * PAGE;

export interface TransportWishes {
  /** Let the kernel cache writes (it then owns size and mtime). */
  writebackCache: boolean;
  /** Serve requests through FUSE over io_uring ring queues, when the kernel offers it. */
  ioUring?: boolean;
}

export type Negotiation =
  | {
      ok: true;
      reply: InitOut;
      wanted: number;
      /**
       * Writable handles are opened FOPEN_DIRECT_IO (see writersBypassPageCache): only when the
       * kernel keeps shared mmap working on them and its page cache coherent with them.
       */
      uncachedWriters: boolean;
      /** The kernel offered FUSE over io_uring and we asked for it: ring queues may register after INIT. */
      ioUring: boolean;
    }
  | { ok: false; reason: string; /** A newer major: answer with ours and wait for a new INIT. */ retryWithMajor?: number };

/**
 * Picks what to ask for from what the kernel offers. Only flags the kernel offered are set, so
 * an older kernel simply gets fewer features (no MAX_PAGES → 128 KiB requests).
 */
export function negotiate(k: InitIn, wishes: TransportWishes): Negotiation {
  if (k.major > 7)
    return { ok: false, reason: `kernel FUSE protocol ${k.major}.${k.minor} is newer than 7: asking for 7`, retryWithMajor: 7 };
  if (k.major < 7 || k.minor < MIN_MINOR)
    return { ok: false, reason: `kernel FUSE protocol ${k.major}.${k.minor} is older than 7.${MIN_MINOR}` };
  const minor = Math.min(k.minor, OUR_MINOR);
  const wanted =
    InitFlag.ASYNC_READ |
    InitFlag.BIG_WRITES |
    // With the writeback cache the kernel's own size wins, and an atomic O_TRUNC open sets it to 0
    // (fuse_finish_open): without the flag O_TRUNC comes as SETATTR size=0, whose reply restores it.
    (wishes.writebackCache ? 0 : InitFlag.ATOMIC_O_TRUNC) |
    InitFlag.ASYNC_DIO |
    InitFlag.PARALLEL_DIROPS |
    // READDIRPLUS when the kernel sees a listing followed by lookups (ls -l), plain READDIR otherwise.
    InitFlag.DO_READDIRPLUS |
    InitFlag.READDIRPLUS_AUTO |
    InitFlag.MAX_PAGES |
    (wishes.writebackCache ? InitFlag.WRITEBACK_CACHE : 0);
  // Bypassing the page cache for writers needs the kernel to keep shared mmap and the cached
  // pages of read-only handles coherent with direct I/O (DIRECT_IO_ALLOW_MMAP, 7.39); the
  // writeback cache, which lives in that page cache, rules it out.
  const uncachedWriters =
    !wishes.writebackCache && minor >= 39 && (k.flags & InitFlag.INIT_EXT) !== 0 && (k.flags2 & InitFlag2.DIRECT_IO_ALLOW_MMAP) !== 0;
  // Offered only while the fuse module's enable_uring is set (Linux 6.14+).
  const ioUring = (wishes.ioUring ?? false) && (k.flags & InitFlag.INIT_EXT) !== 0 && (k.flags2 & InitFlag2.OVER_IO_URING) !== 0;
  const flags = ((wanted & k.flags) | (uncachedWriters || ioUring ? InitFlag.INIT_EXT : 0)) >>> 0;
  const bigRequests = (flags & InitFlag.MAX_PAGES) !== 0 && minor >= 28;
  return {
    ok: true,
    wanted,
    uncachedWriters,
    ioUring,
    reply: {
      major: 7,
      minor,
      maxReadahead: k.maxReadahead,
      flags,
      maxBackground: 0, // 0: the kernel's defaults (12 / 9), as libfuse leaves them
      congestionThreshold: 0,
      maxWrite: bigRequests ? MAX_WRITE : LEGACY_MAX_WRITE,
      timeGran: 1,
      maxPages: bigRequests ? MAX_PAGES : 0,
      flags2: (uncachedWriters ? InitFlag2.DIRECT_IO_ALLOW_MMAP : 0) | (ioUring ? InitFlag2.OVER_IO_URING : 0),
    },
  };
}
