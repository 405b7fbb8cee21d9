import createDebug from 'debug';
import { errno } from '../../fs/errno';
import type { FsCore, NodeAttr } from '../../fs/operations-core';
import { settle } from '../../io/errors';
import { BufferPool } from './buffer-pool';
import { NodeTable, ROOT_ID } from './node-table';
import { type Attr, decodeName, encodeAttrOut, encodeEntryOut } from './protocol/attr';
import { decodeFallocateIn } from './protocol/fallocate';
import { DirentType, InitFlag, initFlagNames, OpenOutFlag, SetattrValid } from './protocol/flags';
import { decodeBatchForgetIn, decodeForgetIn, decodeInterruptIn } from './protocol/forget';
import { decodeInHeader, encodeOutHeader, IN_HEADER_SIZE, OUT_HEADER_SIZE, type RequestHeader } from './protocol/header';
import { decodeInitIn, encodeInitOut, type InitIn } from './protocol/init';
import { decodeLseekIn, encodeLseekOut } from './protocol/lseek';
import { negotiate, OUR_MINOR } from './protocol/negotiate';
import { expectsReply, Op } from './protocol/opcodes';
import { decodeFlushIn, decodeFsyncIn, decodeOpenIn, decodeReleaseIn, encodeOpenOut } from './protocol/open';
import { direntPlusFit, type DirEntry, encodeDirents, encodeDirentsPlus } from './protocol/readdir';
import { decodeReadIn, decodeWriteIn, encodeWriteOut, type ReadIn } from './protocol/rw';
import { decodeSetattrIn } from './protocol/setattr';
import { encodeStatfsOut } from './protocol/statfs';
import { Replies, type ReplySink } from './replies';
import { TransportStats } from './transport-stats';

export type { ReplySink } from './replies';

const log = createDebug('vdiskfs:fuse');

/** How long the kernel may cache names and attributes (seconds), as the fuse-native transport did. */
const ENTRY_VALID = 1;
const ATTR_VALID = 1;
const EPROTO = 71;
const O_ACCMODE = 3;
const O_RDONLY = 0;

export interface KernelAdapterOptions {
  writebackCache: boolean;
  warn: (message: string) => void;
  /** DESTROY came: the kernel is done with this mount. */
  onDestroy(): void;
  /** Ask for FUSE over io_uring at INIT (the io-uring transport). */
  ioUring?: boolean;
  /** INIT was answered: whether the kernel agreed to FUSE over io_uring (its ring queues may register now). */
  onInit?(agreed: { ioUring: boolean }): void;
}

interface DirHandle {
  path: string;
  entries: DirEntry[] | undefined;
}

/**
 * The kernel-protocol adapter: decodes each request, calls the operations core, encodes the
 * reply. dispatch() takes what it needs from the request buffer synchronously (the loop reuses
 * that buffer for the next request): header fields, and write payloads, which the core copies
 * before its first await. A request whose core call needs no waiting is answered in the same
 * microtask checkpoint, without leaving the main thread. Encoding and writing replies, and
 * tracking requests that wait for the core: replies.ts.
 */
export class KernelAdapter {
  readonly stats = new TransportStats();
  private readonly nodes = new NodeTable();
  private readonly dirs = new Map<number, DirHandle>();
  private nextDir = 1;
  private readonly pool = new BufferPool();
  private readonly replies: Replies;
  /** Negotiated at INIT: writable handles bypass the kernel's page cache (openReplyFlags). */
  private uncachedWriters = false;

  constructor(
    private readonly core: FsCore,
    sink: ReplySink,
    private readonly opts: KernelAdapterOptions,
  ) {
    this.replies = new Replies(sink, (nodeid) => this.nodes.pathOf(nodeid));
  }

  /** Requests still waiting for the core (thread-pool I/O, a flush): the loop sleeps off-thread meanwhile. */
  get pending(): number {
    return this.replies.pending;
  }

  /** Handles one request of `n` bytes in `buf`. Never throws. */
  dispatch(buf: Buffer, n: number): void {
    let h: RequestHeader;
    try {
      h = decodeInHeader(buf, n);
    } catch (e) {
      this.opts.warn(`ignored a malformed FUSE request: ${(e as Error).message}`);
      return;
    }
    this.stats.request(h.opcode);
    try {
      this.route(h, buf, n);
    } catch (e) {
      // A decoding error (a request shorter than its struct): answer it, never crash the loop.
      this.replies.fail(h, e);
    }
  }

  private route(h: RequestHeader, buf: Buffer, n: number): void {
    const off = IN_HEADER_SIZE;
    const core = this.core;
    switch (h.opcode) {
      case Op.READ: {
        const r = decodeReadIn(buf, off);
        this.stats.size('read', r.size);
        return this.read(h, r);
      }
      case Op.WRITE: {
        const w = decodeWriteIn(buf, off, n);
        this.stats.size('write', w.size);
        // A view into the request buffer: the core writes or copies it before the buffer is read into again.
        const data = buf.subarray(w.dataOffset, w.dataOffset + w.size);
        // The synchronous path first: an O_DIRECT write in place, answered here with no promise turns.
        const now = core.writeSync(w.fh, w.offset, data);
        if (now !== undefined) {
          this.stats.writesAtOnce++;
          return this.replies.reply(h, (b, o) => encodeWriteOut(b, o, now));
        }
        return this.replies.run(
          h,
          () => core.write(w.fh, w.offset, data),
          (b, o, written) => encodeWriteOut(b, o, written),
        );
      }
      case Op.LOOKUP: {
        const parent = this.nodes.pathOf(h.nodeid);
        if (parent === undefined) return this.replies.error(h, errno('ENOENT'));
        const path = this.nodes.childPath(parent, decodeName(buf, off, n));
        return this.replies.run(
          h,
          () => core.getattr(path),
          (b, o, a) => {
            const id = this.nodes.remember(path, a.identity);
            return encodeEntryOut(b, o, id, ENTRY_VALID, ATTR_VALID, this.attr(path, a));
          },
        );
      }
      case Op.GETATTR: {
        const path = this.pathOf(h);
        if (path === undefined) return this.replies.error(h, errno('ENOENT'));
        return this.replies.run(
          h,
          () => core.getattr(path),
          (b, o, a) => encodeAttrOut(b, o, ATTR_VALID, this.attr(path, a)),
        );
      }
      case Op.SETATTR: {
        const path = this.pathOf(h);
        if (path === undefined) return this.replies.error(h, errno('ENOENT'));
        const s = decodeSetattrIn(buf, off);
        // Modes and owners of a view come from its image file; times are harmless (`touch`) and ignored.
        if (s.valid & (SetattrValid.MODE | SetattrValid.UID | SetattrValid.GID)) return this.replies.error(h, errno('EPERM'));
        return this.replies.run(
          h,
          async () => {
            // Writeback cache: O_TRUNC arrives as SETATTR size=0 without a handle (no ATOMIC_O_TRUNC; see negotiate.ts).
            const openTruncate =
              s.size === 0 && s.fh === undefined && ((this.stats.negotiated?.flags ?? 0) & InitFlag.WRITEBACK_CACHE) !== 0;
            if (s.size !== undefined) await core.truncate(path, s.size, { openTruncate });
            return core.getattr(path);
          },
          (b, o, a) => encodeAttrOut(b, o, ATTR_VALID, this.attr(path, a)),
        );
      }
      case Op.OPEN: {
        const path = this.pathOf(h);
        if (path === undefined) return this.replies.error(h, errno('ENOENT'));
        const { flags } = decodeOpenIn(buf, off);
        return this.replies.run(
          h,
          () => core.open(path, flags),
          (b, o, fh) => encodeOpenOut(b, o, fh, this.openReplyFlags(flags)),
        );
      }
      case Op.FLUSH: {
        const { fh } = decodeFlushIn(buf, off);
        return this.replies.run(
          h,
          () => core.flush(fh),
          () => 0,
        );
      }
      case Op.FSYNC: {
        const { fh, datasync } = decodeFsyncIn(buf, off);
        return this.replies.run(
          h,
          () => core.fsync(fh, datasync),
          () => 0,
        );
      }
      case Op.RELEASE: {
        const { fh } = decodeReleaseIn(buf, off);
        return this.replies.run(
          h,
          () => core.release(fh),
          () => 0,
        );
      }
      case Op.OPENDIR: {
        const path = this.pathOf(h);
        if (path === undefined) return this.replies.error(h, errno('ENOENT'));
        const fh = this.nextDir++;
        this.dirs.set(fh, { path, entries: undefined });
        return this.replies.reply(h, (b, o) => encodeOpenOut(b, o, fh, 0));
      }
      case Op.READDIR:
        return this.readdir(h, decodeReadIn(buf, off));
      case Op.READDIRPLUS:
        return this.readdirplus(h, decodeReadIn(buf, off));
      case Op.RELEASEDIR:
        this.dirs.delete(decodeReleaseIn(buf, off).fh);
        return this.replies.reply(h, () => 0);
      case Op.FSYNCDIR:
        return this.replies.reply(h, () => 0);
      case Op.STATFS:
        return this.replies.run(
          h,
          () => core.statfs(),
          (b, o, s) =>
            encodeStatfsOut(b, o, {
              blocks: s.blocks,
              bfree: s.bfree,
              bavail: s.bavail,
              files: s.files,
              ffree: s.ffree,
              bsize: s.bsize,
              namelen: s.namemax,
              frsize: s.bsize,
            }),
        );
      case Op.FALLOCATE: {
        const f = decodeFallocateIn(buf, off);
        return this.replies.run(
          h,
          () => core.fallocate(f.fh, f.offset, f.length, f.mode),
          () => 0,
        );
      }
      case Op.LSEEK: {
        const l = decodeLseekIn(buf, off);
        return this.replies.run(
          h,
          () => core.lseek(l.fh, l.offset, l.whence),
          (b, o, pos) => encodeLseekOut(b, o, pos),
        );
      }
      case Op.FORGET:
        this.nodes.forget(h.nodeid, decodeForgetIn(buf, off).nlookup);
        return;
      case Op.BATCH_FORGET:
        for (const f of decodeBatchForgetIn(buf, off, n)) this.nodes.forget(f.nodeid, f.nlookup);
        return;
      case Op.INTERRUPT: {
        // The core cannot abandon a request half done (a driver write, a flush): it finishes and
        // is answered; the kernel drops the answer if the caller is gone. Counted for --stats.
        const { unique } = decodeInterruptIn(buf, off);
        if (this.replies.waiting(unique)) this.stats.interrupts++;
        return;
      }
      case Op.INIT:
        return this.init(h, decodeInitIn(buf, off, n));
      case Op.DESTROY:
        this.replies.reply(h, () => 0);
        this.opts.onDestroy();
        return;
      case Op.CREATE:
      case Op.MKNOD:
      case Op.MKDIR:
      case Op.UNLINK:
      case Op.RMDIR:
      case Op.RENAME:
      case Op.RENAME2:
      case Op.LINK:
      case Op.SYMLINK:
        // The namespace mirrors the images folder: it changes there, never through the mount.
        return this.replies.error(h, errno('EPERM'));
      default:
        if (expectsReply(h.opcode)) this.replies.error(h, errno('ENOSYS')); // xattrs, locks, ioctl...: the kernel stops asking
    }
  }

  private init(h: RequestHeader, k: InitIn): void {
    const n = negotiate(k, { writebackCache: this.opts.writebackCache, ioUring: this.opts.ioUring ?? false });
    this.stats.kernel = { major: k.major, minor: k.minor, flags: k.flags };
    if (!n.ok) {
      if (n.retryWithMajor !== undefined) {
        // A newer major: tell the kernel ours; it sends INIT again with 7.x.
        return this.replies.reply(h, (b, o) =>
          encodeInitOut(b, o, {
            major: 7,
            minor: OUR_MINOR,
            maxReadahead: 0,
            flags: 0,
            maxBackground: 0,
            congestionThreshold: 0,
            maxWrite: 0,
            timeGran: 0,
            maxPages: 0,
          }),
        );
      }
      this.opts.warn(`cannot serve this kernel: ${n.reason}`);
      return this.replies.error(h, -EPROTO);
    }
    this.stats.negotiated = n.reply;
    this.uncachedWriters = n.uncachedWriters;
    log(
      'INIT kernel 7.%d flags %s -> 7.%d max_write %d flags %s',
      k.minor,
      initFlagNames(k.flags, k.flags2).join(','),
      n.reply.minor,
      n.reply.maxWrite,
      initFlagNames(n.reply.flags, n.reply.flags2).join(','),
    );
    this.replies.reply(h, (b, o) => encodeInitOut(b, o, n.reply));
    this.opts.onInit?.({ ioUring: n.ioUring });
  }

  /**
   * FOPEN_* flags of an open view. A handle open for writing bypasses the kernel's page cache
   * (FOPEN_DIRECT_IO), as qemu-storage-daemon's export does for every handle: a writer's pages
   * were only ever written through, so caching them cost the client a page-cache copy per write
   * and the machine a second cached copy of what the host file's cache already holds. Read-only
   * handles keep the page cache and the kernel's readahead, which a small-block `dd` or `cp`
   * of a view needs. Only when the kernel promised coherence (INIT's uncachedWriters): shared
   * mmap stays possible and a direct write drops the range from every handle's cached pages.
   */
  private openReplyFlags(openFlags: number): number {
    const writable = (openFlags & O_ACCMODE) !== O_RDONLY;
    return this.uncachedWriters && writable ? OpenOutFlag.DIRECT_IO : 0;
  }

  private read(h: RequestHeader, r: ReadIn): void {
    const out = this.pool.take(OUT_HEADER_SIZE + r.size);
    const into = out.subarray(OUT_HEADER_SIZE, OUT_HEADER_SIZE + r.size);
    // The synchronous path first: a cached mapping and a small host read answer here, no promise turns.
    let now: number | undefined;
    try {
      now = this.core.readSync(r.fh, r.offset, into);
    } catch (e) {
      this.pool.give(out);
      return this.replies.fail(h, e);
    }
    if (now !== undefined) {
      this.stats.readsAtOnce++;
      encodeOutHeader(out, OUT_HEADER_SIZE + now, 0, h.unique);
      this.replies.send(out, OUT_HEADER_SIZE + now);
      this.pool.give(out);
      return;
    }
    const p = settle(() => this.core.read(r.fh, r.offset, into));
    this.replies.begin(h.unique);
    p.then(
      (got) => {
        this.replies.end(h.unique);
        encodeOutHeader(out, OUT_HEADER_SIZE + got, 0, h.unique);
        this.replies.send(out, OUT_HEADER_SIZE + got);
        this.pool.give(out);
      },
      (e) => {
        this.replies.end(h.unique);
        this.pool.give(out);
        this.replies.fail(h, e);
      },
    );
  }

  private readdir(h: RequestHeader, r: ReadIn): void {
    const dir = this.dirs.get(r.fh);
    if (!dir) return this.replies.error(h, errno('EBADF'));
    this.replies.run(
      h,
      () => this.listing(dir, r.offset),
      () => 0,
      (entries) => {
        const b = this.replyBuffer(r.size);
        const len = encodeDirents(b, OUT_HEADER_SIZE, r.size, entries, r.offset);
        encodeOutHeader(b, OUT_HEADER_SIZE + len, 0, h.unique);
        this.replies.send(b, OUT_HEADER_SIZE + len);
      },
    );
  }

  /**
   * READDIRPLUS (`ls -l`, `find -size`): each name with what LOOKUP would answer, so listing a
   * folder of thousands of views costs one request per page of names instead of one per name.
   * Every record with a node id counts as one lookup, as the kernel links each one it is sent.
   */
  private readdirplus(h: RequestHeader, r: ReadIn): void {
    const dir = this.dirs.get(r.fh);
    if (!dir) return this.replies.error(h, errno('EBADF'));
    this.replies.run(
      h,
      async () => {
        const entries = await this.listing(dir, r.offset);
        const count = direntPlusFit(r.size, entries, r.offset);
        const attrs: Array<NodeAttr | undefined> = [];
        for (let i = r.offset; i < r.offset + count; i++) {
          const name = entries[i]!.name;
          // '.' and '..' are never linked by the kernel: names only.
          if (name === '.' || name === '..') attrs.push(undefined);
          else attrs.push(await this.core.getattr(this.nodes.childPath(dir.path, name)).catch(() => undefined));
        }
        return { entries, count, attrs };
      },
      () => 0,
      ({ entries, count, attrs }) => {
        const b = this.replyBuffer(r.size);
        const len = encodeDirentsPlus(b, OUT_HEADER_SIZE, entries, r.offset, count, (i, buf, at) => {
          const a = attrs[i - r.offset];
          if (!a) return; // vanished since the listing, or '.'/'..': the name alone
          const path = this.nodes.childPath(dir.path, entries[i]!.name);
          const id = this.nodes.remember(path, a.identity);
          encodeEntryOut(buf, at, id, ENTRY_VALID, ATTR_VALID, this.attr(path, a));
        });
        encodeOutHeader(b, OUT_HEADER_SIZE + len, 0, h.unique);
        this.replies.send(b, OUT_HEADER_SIZE + len);
      },
    );
  }

  /** The folder is listed afresh when a reader starts at 0 (images come and go), then served from that listing. */
  private async listing(dir: { path: string; entries?: DirEntry[] }, offset: number): Promise<DirEntry[]> {
    if (dir.entries && offset > 0) return dir.entries;
    const list = await this.core.readdir(dir.path);
    const parent = dir.path === '/' ? '/' : dir.path.slice(0, dir.path.lastIndexOf('/')) || '/';
    dir.entries = [
      { ino: this.nodes.inoOf(dir.path), name: '.', type: DirentType.DIR },
      { ino: this.nodes.inoOf(parent), name: '..', type: DirentType.DIR },
      ...list.map((e) => ({
        ino: this.nodes.inoOf(this.nodes.childPath(dir.path, e.name)),
        name: e.name,
        type: e.kind === 'dir' ? DirentType.DIR : DirentType.REG,
      })),
    ];
    return dir.entries;
  }

  private replyBuffer(size: number): Buffer {
    return OUT_HEADER_SIZE + size <= this.replies.small.length ? this.replies.small : Buffer.alloc(OUT_HEADER_SIZE + size);
  }

  private pathOf(h: RequestHeader): string | undefined {
    return h.nodeid === ROOT_ID ? '/' : this.nodes.pathOf(h.nodeid);
  }

  private attr(path: string, a: NodeAttr): Attr {
    return {
      ino: this.nodes.inoOf(path),
      size: a.size,
      blocks: a.blocks,
      atimeMs: a.atimeMs,
      mtimeMs: a.mtimeMs,
      ctimeMs: a.ctimeMs,
      mode: a.mode,
      nlink: a.nlink,
      uid: a.uid,
      gid: a.gid,
      blksize: 4096,
    };
  }
}
