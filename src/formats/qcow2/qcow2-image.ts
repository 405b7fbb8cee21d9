/**
 * A qcow2 image: reads, writes, zero writes, map, flush, resize. The mapping answers come from
 * mapping.ts; host cluster accounting from refcounts.ts; tables from the metadata cache.
 *
 * Concurrency: reads and writes whose clusters are all mapped in cached tables run without the
 * lock (one synchronous lookup, then host I/O). Everything that loads or changes metadata runs
 * under `mutex`, and re-reads the mapping there, so no cluster is ever allocated twice.
 */
import createDebug from 'debug';
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import type { Extent, Image, ImageInfo, ImageStats } from '../types';
import { decompressCluster } from './compression';
import { COMPAT_LAZY_REFCOUNTS, Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, INCOMPAT_EXTL2, MAX_L1_BYTES } from './header';
import { MapContext, mapSync, Piece, tablesFor } from './mapping';
import type { ImageMeta } from './meta';
import { CacheEntry, MetadataCache } from './metadata-cache';
import { Mutex } from './mutex';
import type { Refcounts } from './refcounts';
import { Snapshot, snapshotInfo } from './snapshot-table';
import {
  KIND_COMPRESSED,
  KIND_NORMAL,
  KIND_UNALLOCATED,
  KIND_ZERO,
  l1Copied,
  l2AllocBits,
  l2Compressed,
  l2Copied,
  l2HostOffset,
  l2Kind,
  setL1,
  l2ZeroBits,
  setL2Extended,
  setL2Normal,
  setL2Zero,
  setL2ZeroAllocated,
  subclusterMask,
} from './table-entry';

const log = createDebug('vdiskfs:qcow2');

export interface DriverCounters {
  metadataWrites: number;
  dataWrites: number;
  hostFlushes: number;
  allocatedClusters: number;
}

export interface Qcow2Parts {
  path: string;
  file: HostFile;
  dataFile: HostFile;
  meta: ImageMeta;
  readOnly: boolean;
  virtualSize: number;
  l1: Buffer;
  l1Offset: number;
  cache: MetadataCache;
  refcounts?: Refcounts;
  counters: DriverCounters;
  backing?: Image;
  backingPath?: string;
  snapshots: () => Promise<Snapshot[]>;
}

type ZeroMode = 'none' | 'unallocated' | 'all';

function isAllZero(b: Buffer): boolean {
  // Compare 8 KiB at a time against a shared zero page (Buffer.compare is native).
  const z = ZERO_PAGE;
  for (let o = 0; o < b.length; o += z.length) {
    const n = Math.min(z.length, b.length - o);
    if (b.compare(z, 0, n, o, o + n) !== 0) return false;
  }
  return true;
}
const ZERO_PAGE = Buffer.alloc(8192);

export class Qcow2Image implements Image {
  readonly format = 'qcow2';
  readonly path: string;
  virtualSize: number;
  readonly readOnly: boolean;
  private readonly file: HostFile;
  private readonly dataFile: HostFile;
  private readonly header: Header;
  private readonly meta: ImageMeta;
  private readonly cs: number;
  private readonly ctx: MapContext;
  private readonly cache: MetadataCache;
  private readonly refcounts?: Refcounts;
  private readonly counters: DriverCounters;
  private readonly backing?: Image;
  private readonly backingPath?: string;
  private readonly snapshots: () => Promise<Snapshot[]>;
  private readonly mutex = new Mutex();
  private l1Offset: number;
  private l1DirtyLo = Infinity;
  private l1DirtyHi = -1;
  private closed = false;
  private decompressed = new Map<number, Buffer>(); // small cache of inflated clusters by host offset

  constructor(p: Qcow2Parts) {
    this.path = p.path;
    this.file = p.file;
    this.dataFile = p.dataFile;
    this.meta = p.meta;
    this.header = p.meta.header;
    this.readOnly = p.readOnly;
    this.virtualSize = p.virtualSize;
    this.cs = 2 ** this.header.clusterBits;
    this.cache = p.cache;
    this.refcounts = p.refcounts;
    this.counters = p.counters;
    this.backing = p.backing;
    this.backingPath = p.backingPath;
    this.snapshots = p.snapshots;
    this.l1Offset = p.l1Offset;
    const extended = (this.header.incompatible & INCOMPAT_EXTL2) !== 0n;
    const entrySize = extended ? 16 : 8;
    this.ctx = {
      clusterBits: this.header.clusterBits,
      layout: { clusterBits: this.header.clusterBits, extended, entrySize, dataFile: this.dataFile !== this.file },
      l2Entries: this.cs / entrySize,
      l1: p.l1,
      l1Size: p.l1.length / 8,
      cache: this.cache,
    };
  }

  /** v3 has zero clusters; v2 does not. */
  private get zeroClusters(): boolean {
    return this.header.version === 3;
  }

  // ---- reads ----

  async read(offset: number, into: Buffer): Promise<void> {
    this.checkRange(offset, into.length);
    if (into.length === 0) return;
    const pieces = mapSync(this.ctx, offset, into.length) ?? (await this.mapLocked(offset, into.length));
    await this.readPieces(pieces, offset, into);
  }

  private async mapLocked(offset: number, length: number): Promise<Piece[]> {
    return this.mutex.run(async () => {
      const pinned = await this.pinTables(offset, length);
      try {
        return mapSync(this.ctx, offset, length)!;
      } finally {
        for (const e of pinned) this.cache.unpin(e);
        await this.cache.evict();
      }
    });
  }

  private async pinTables(offset: number, length: number): Promise<CacheEntry[]> {
    const out: CacheEntry[] = [];
    try {
      for (const t of tablesFor(this.ctx, offset, length)) out.push(await this.cache.get('l2', t));
    } catch (e) {
      for (const x of out) this.cache.unpin(x);
      throw e;
    }
    return out;
  }

  /** Fills `into` (guest range starting at `base`) from mapped pieces. */
  private async readPieces(pieces: Piece[], base: number, into: Buffer): Promise<void> {
    const io: Promise<unknown>[] = [];
    for (const p of pieces) {
      const dst = into.subarray(p.guest - base, p.guest - base + p.length);
      switch (p.kind) {
        case KIND_NORMAL:
          io.push(this.dataFile.read(dst, p.host, 'data'));
          break;
        case KIND_ZERO:
          dst.fill(0);
          break;
        case KIND_UNALLOCATED:
          io.push(this.readBacking(p.guest, dst));
          break;
        case KIND_COMPRESSED:
          io.push(this.readCompressed(p, dst));
          break;
      }
    }
    await Promise.all(io);
  }

  private async readBacking(guest: number, dst: Buffer): Promise<void> {
    const b = this.backing;
    const n = b ? Math.max(0, Math.min(dst.length, b.virtualSize - guest)) : 0;
    if (n > 0) await b!.read(guest, dst.subarray(0, n));
    if (n < dst.length) dst.fill(0, n);
  }

  private async readCompressed(p: Piece, dst: Buffer): Promise<void> {
    let cluster = this.decompressed.get(p.host);
    if (!cluster) {
      if (p.cSize > 2 * this.cs + 512) throw VdiskError.corrupt(`qcow2 compressed cluster too large (${p.cSize} bytes)`);
      const src = Buffer.alloc(p.cSize);
      await this.file.read(src, p.host, 'data');
      cluster = Buffer.alloc(this.cs);
      decompressCluster(src, this.cs, this.header.compressionType, cluster);
      this.decompressed.set(p.host, cluster);
      if (this.decompressed.size > 8) this.decompressed.delete(this.decompressed.keys().next().value as number);
    }
    cluster.copy(dst, 0, p.guest - p.cluster, p.guest - p.cluster + p.length);
  }

  // ---- writes ----

  async write(offset: number, data: Buffer | Buffer[]): Promise<void> {
    const buf = Array.isArray(data) ? (data.length === 1 ? data[0]! : Buffer.concat(data)) : data;
    this.checkWritable();
    this.checkRange(offset, buf.length);
    if (buf.length === 0) return;
    if (await this.tryDirectWrite(offset, buf)) return;
    await this.mutex.run(async () => {
      await this.writeLocked(offset, buf, 'unallocated');
      await this.cache.evict();
    });
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length);
    // Bounded chunks: one zero buffer, reused (only partial clusters ever copy from it).
    const chunk = Math.max(this.cs, 4 << 20);
    const zeros = Buffer.alloc(Math.min(length, chunk));
    for (let done = 0; done < length; ) {
      const n = Math.min(zeros.length, length - done);
      const part = n === zeros.length ? zeros : zeros.subarray(0, n);
      const at = offset + done;
      await this.mutex.run(async () => {
        await this.writeLocked(at, part, this.zeroClusters ? 'all' : 'none');
        await this.cache.evict();
      });
      done += n;
    }
  }

  /** Host offset of a cluster that can be overwritten in place, or -1. */
  private directHost(t: Buffer, l2i: number): number {
    const l = this.ctx.layout;
    if (l2Kind(t, l2i, l) !== KIND_NORMAL || !l2Copied(t, l2i, l)) return -1;
    if (l.extended && l2AllocBits(t, l2i, l) !== 0xffffffff) return -1;
    return l2HostOffset(t, l2i, l);
  }

  /** Lock-free fast path: every cluster already allocated and private → write in place. */
  private async tryDirectWrite(offset: number, buf: Buffer): Promise<boolean> {
    const cs = this.cs;
    const runs: { host: number; from: number; to: number }[] = [];
    const end = offset + buf.length;
    let pos = offset;
    let t: Buffer | undefined;
    let tl1 = -1;
    while (pos < end) {
      const gc = Math.floor(pos / cs);
      const l1i = Math.floor(gc / this.ctx.l2Entries);
      if (l1i !== tl1) {
        if (l1i >= this.ctx.l1Size || !l1Copied(this.ctx.l1, l1i)) return false;
        const off = this.l2Offset(l1i);
        t = off ? this.cache.peek(off) : undefined;
        if (!t) return false;
        tl1 = l1i;
      }
      const host = this.directHost(t!, gc % this.ctx.l2Entries);
      if (host < 0) return false;
      const cEnd = Math.min(end, (gc + 1) * cs);
      const h = host + (pos - gc * cs);
      const last = runs[runs.length - 1];
      if (last && last.host + (last.to - last.from) === h) last.to = cEnd - offset;
      else runs.push({ host: h, from: pos - offset, to: cEnd - offset });
      pos = cEnd;
    }
    await Promise.all(runs.map((r) => this.dataFile.write(buf.subarray(r.from, r.to), r.host, 'data')));
    this.counters.dataWrites += runs.length;
    return true;
  }

  private l2Offset(l1i: number): number {
    return this.ctx.l1.readUInt32BE(l1i * 8 + 4) === 0 && (this.ctx.l1.readUInt32BE(l1i * 8) & 0x00ffffff) === 0 ? 0 : mapL2Offset(this.ctx, l1i);
  }

  /**
   * The slow path, under the lock: makes every L2 table of the range private, then walks the
   * clusters: private allocated ones are written in place, runs of the others get one new
   * contiguous host run and one vectored data write (head COW + payload + tail COW), then their
   * L2 entries. With a zero payload, fully covered clusters become zero clusters instead.
   */
  private async writeLocked(offset: number, buf: Buffer, zeroMode: ZeroMode): Promise<void> {
    const cs = this.cs;
    const n = this.ctx.l2Entries;
    const end = offset + buf.length;
    const firstC = Math.floor(offset / cs);
    const lastC = Math.floor((end - 1) / cs);
    const allZero = zeroMode === 'all' || (zeroMode === 'unallocated' && isAllZero(buf));
    // Tables are loaded (pinned) up front for the synchronous checks; made private only where
    // something really changes, so a zero write over zeros touches no metadata.
    const views = new Map<number, CacheEntry | undefined>();
    const pinned: CacheEntry[] = [];
    const priv = new Set<number>();
    const makePrivate = async (c: number): Promise<void> => {
      const l1i = Math.floor(c / n);
      if (priv.has(l1i)) return;
      const e = await this.privateL2(l1i);
      pinned.push(e);
      views.set(l1i, e);
      priv.add(l1i);
    };
    try {
      for (let l1i = Math.floor(firstC / n); l1i <= Math.floor(lastC / n); l1i++) {
        const off = this.l2Offset(l1i);
        const e = off ? await this.cache.get('l2', off) : undefined;
        if (e) pinned.push(e);
        views.set(l1i, e);
      }
      const entryOf = (c: number): [CacheEntry, number] => [views.get(Math.floor(c / n))!, c % n];
      const direct = (c: number): number => {
        const e = views.get(Math.floor(c / n));
        return e ? this.directHost(e.buf, c % n) : -1;
      };
      const fullyCovered = (c: number): boolean => offset <= c * cs && end >= Math.min((c + 1) * cs, this.virtualSize);
      // 'skip': already reads as zeros; 'zero': becomes a zero cluster; 'write': data goes out.
      const zeroAction = (c: number): 'skip' | 'zero' | 'write' => {
        if (!allZero || !fullyCovered(c)) return 'write';
        if (this.readsAsZeros(c * cs, cs)) return 'skip';
        if (this.zeroClusters && (zeroMode === 'all' || direct(c) < 0)) return 'zero';
        return 'write';
      };
      const io: Promise<void>[] = [];
      let c = firstC;
      while (c <= lastC) {
        const za = zeroAction(c);
        if (za === 'skip') {
          c++;
          continue;
        }
        if (za === 'zero') {
          const keepHost = direct(c) >= 0;
          await makePrivate(c);
          const [e, i] = entryOf(c);
          this.setZero(e, i, keepHost);
          c++;
          continue;
        }
        const host = direct(c);
        if (host >= 0) {
          // In place; clusters contiguous on the host too go out as one write.
          const from = Math.max(offset, c * cs);
          let to = Math.min(end, (c + 1) * cs);
          let hostEnd = host + cs;
          c++;
          while (c <= lastC && direct(c) === hostEnd && zeroAction(c) === 'write') {
            to = Math.min(end, (c + 1) * cs);
            hostEnd += cs;
            c++;
          }
          io.push(this.dataFile.write(buf.subarray(from - offset, to - offset), host + (from - Math.floor(from / cs) * cs), 'data'));
          this.counters.dataWrites++;
          continue;
        }
        if (this.privateHost(c, entryOf) >= 0) {
          // A private host cluster that is not fully writable in place (extended L2 with some
          // subclusters unallocated, or a preallocated zero cluster): reuse it, no allocation.
          await makePrivate(c);
          if (this.ctx.layout.extended) await this.writeSubclusters(c, offset, buf, entryOf);
          else await this.writeZeroAllocated(c, offset, buf, entryOf);
          c++;
          continue;
        }
        let k = 1;
        while (c + k <= lastC && direct(c + k) < 0 && zeroAction(c + k) === 'write' && this.privateHost(c + k, entryOf) < 0) k++;
        for (let j = 0; j < k; j++) await makePrivate(c + j);
        await this.allocateRun(c, k, offset, buf, entryOf);
        c += k;
      }
      await Promise.all(io);
    } finally {
      for (const e of pinned) this.cache.unpin(e);
    }
  }

  private async allocateRun(c0: number, k: number, offset: number, buf: Buffer, entryOf: (c: number) => [CacheEntry, number]): Promise<void> {
    const cs = this.cs;
    const l = this.ctx.layout;
    const runStart = c0 * cs;
    const runEnd = (c0 + k) * cs;
    const end = offset + buf.length;
    // Extended L2: an edge cluster with no host cluster yet only needs its touched subclusters;
    // the others keep their state (unallocated → backing file, or zero).
    const sc = cs / 32;
    const noHost = (c: number): boolean => {
      const [e, i] = entryOf(c);
      return l2Kind(e.buf, i, l) === KIND_UNALLOCATED;
    };
    const writeStart = l.extended && offset > runStart && noHost(c0) ? Math.floor(offset / sc) * sc : runStart;
    const writeEnd = l.extended && end < runEnd && noHost(c0 + k - 1) ? Math.ceil(end / sc) * sc : runEnd;
    const parts: Buffer[] = [];
    // COW reads happen before anything changes; they see the old mapping. New clusters are
    // always past everything ever written (append-only allocation), so they read as zeros:
    // COW regions that read as zeros anyway are not written at all.
    let skipHead = 0;
    if (offset > writeStart) {
      if (this.readsAsZeros(writeStart, offset - writeStart)) {
        skipHead = offset - writeStart;
      } else {
        const head = Buffer.alloc(offset - writeStart);
        await this.readLayer(writeStart, head);
        parts.push(head);
      }
    }
    parts.push(buf.subarray(Math.max(offset, runStart) - offset, Math.min(end, runEnd) - offset));
    if (end < writeEnd && !this.readsAsZeros(end, writeEnd - end)) {
      const tail = Buffer.alloc(writeEnd - end);
      await this.readLayer(end, tail);
      parts.push(tail);
    }
    const host = await this.refcounts!.allocate(k);
    this.counters.allocatedClusters += k;
    await this.dataFile.write(parts, host + (writeStart - runStart) + skipHead, 'data');
    this.counters.dataWrites++;
    // Data is written: now the L2 entries may point at it.
    for (let j = 0; j < k; j++) {
      const [e, i] = entryOf(c0 + j);
      const cStart = (c0 + j) * cs;
      const from = Math.max(writeStart, cStart);
      const to = Math.min(writeEnd, cStart + cs);
      if (from === cStart && to === cStart + cs) {
        this.dropReference(e.buf, i);
        setL2Normal(e.buf, i, l, host + j * cs, true);
      } else {
        const mask = subclusterMask((from - cStart) / sc, (to - cStart) / sc);
        setL2Extended(e.buf, i, l, host + j * cs, true, mask, l2ZeroBits(e.buf, i, l) & ~mask);
      }
      e.dirty = true;
    }
  }

  /**
   * Host offset of a private (refcount 1) host cluster that a write may reuse: any normal
   * cluster, or a standard zero cluster that kept its host cluster. -1 otherwise.
   */
  private privateHost(c: number, entryOf: (c: number) => [CacheEntry, number]): number {
    const [e, i] = entryOf(c);
    if (!e) return -1;
    const l = this.ctx.layout;
    const kind = l2Kind(e.buf, i, l);
    if ((kind !== KIND_NORMAL && kind !== KIND_ZERO) || !l2Copied(e.buf, i, l)) return -1;
    if (!l1Copied(this.ctx.l1, Math.floor(c / this.ctx.l2Entries))) return -1;
    const host = l2HostOffset(e.buf, i, l);
    return host === 0 ? -1 : host;
  }

  /** Standard L2 zero cluster with its host cluster kept: write the whole cluster in place (zeros around the payload). */
  private async writeZeroAllocated(c: number, offset: number, buf: Buffer, entryOf: (c: number) => [CacheEntry, number]): Promise<void> {
    const cs = this.cs;
    const [e, i] = entryOf(c);
    const host = l2HostOffset(e.buf, i, this.ctx.layout);
    const cStart = c * cs;
    const from = Math.max(offset, cStart);
    const to = Math.min(offset + buf.length, cStart + cs);
    // The host bytes are stale: zeros go out explicitly.
    await this.dataFile.write([Buffer.alloc(from - cStart), buf.subarray(from - offset, to - offset), Buffer.alloc(cStart + cs - to)], host, 'data');
    this.counters.dataWrites++;
    setL2Normal(e.buf, i, this.ctx.layout, host, true);
    e.dirty = true;
  }

  /** Extended L2: writes into a private host cluster, allocating the touched subclusters. */
  private async writeSubclusters(c: number, offset: number, buf: Buffer, entryOf: (c: number) => [CacheEntry, number]): Promise<void> {
    const cs = this.cs;
    const l = this.ctx.layout;
    const sc = cs / 32;
    const [e, i] = entryOf(c);
    const host = l2HostOffset(e.buf, i, l);
    const alloc = l2AllocBits(e.buf, i, l);
    const cStart = c * cs;
    const from = Math.max(offset, cStart);
    const to = Math.min(offset + buf.length, cStart + cs);
    const a = Math.floor((from - cStart) / sc);
    const b = Math.ceil((to - cStart) / sc);
    const parts: Buffer[] = [];
    let ws = from;
    // The host bytes of an unallocated subcluster may be stale: COW writes them explicitly.
    if (!(alloc & (2 ** a)) && from > cStart + a * sc) {
      ws = cStart + a * sc;
      const head = Buffer.alloc(from - ws);
      await this.readLayer(ws, head);
      parts.push(head);
    }
    parts.push(buf.subarray(from - offset, to - offset));
    if (!(alloc & (2 ** (b - 1))) && to < cStart + b * sc) {
      const tail = Buffer.alloc(cStart + b * sc - to);
      await this.readLayer(to, tail);
      parts.push(tail);
    }
    await this.dataFile.write(parts, host + (ws - cStart), 'data');
    this.counters.dataWrites++;
    const mask = subclusterMask(a, b);
    setL2Extended(e.buf, i, l, host, true, (alloc | mask) >>> 0, l2ZeroBits(e.buf, i, l) & ~mask);
    e.dirty = true;
  }

  /** True when this layer's range reads as zeros without any I/O (zero clusters, or unallocated with no backing file). */
  private readsAsZeros(offset: number, length: number): boolean {
    const pieces = mapSync(this.ctx, offset, length);
    return !!pieces && pieces.every((p) => p.kind === KIND_ZERO || (p.kind === KIND_UNALLOCATED && !this.backing));
  }

  /**
   * Makes a cluster read as zeros. With `keepHost` (a private cluster being zeroed) the host
   * cluster stays allocated, so a later write reuses it instead of allocating (QEMU's
   * preallocated zero cluster); otherwise the old reference is dropped.
   */
  private setZero(e: CacheEntry, i: number, keepHost = false): void {
    const l = this.ctx.layout;
    const kind = l2Kind(e.buf, i, l);
    if (kind === KIND_ZERO && l2HostOffset(e.buf, i, l) === 0) return;
    if (keepHost) {
      const host = l2HostOffset(e.buf, i, l);
      if (l.extended) setL2Extended(e.buf, i, l, host, true, 0, 0xffffffff);
      else setL2ZeroAllocated(e.buf, i, host);
    } else {
      this.dropReference(e.buf, i);
      setL2Zero(e.buf, i, l);
    }
    e.dirty = true;
  }

  /** Queues the free of whatever an L2 entry points at (applied after the change is durable). */
  private dropReference(t: Buffer, i: number): void {
    const l = this.ctx.layout;
    const kind = l2Kind(t, i, l);
    if (kind === KIND_COMPRESSED) {
      const c = l2Compressed(t, i, l);
      this.refcounts!.free(c.host, c.size);
    } else if (kind !== KIND_UNALLOCATED) {
      const host = l2HostOffset(t, i, l);
      if (host) this.refcounts!.free(host, this.cs);
    }
  }

  /** Reads this layer's current content (old data, backing, zeros) for COW; tables are pinned. */
  private async readLayer(offset: number, into: Buffer): Promise<void> {
    const pieces = mapSync(this.ctx, offset, into.length) ?? (await this.mapPinned(offset, into.length));
    await this.readPieces(pieces, offset, into);
  }

  private async mapPinned(offset: number, length: number): Promise<Piece[]> {
    const pinned = await this.pinTables(offset, length);
    try {
      return mapSync(this.ctx, offset, length)!;
    } finally {
      for (const e of pinned) this.cache.unpin(e);
    }
  }

  /** The L2 table for an L1 index, made private (allocated, or copied when a snapshot shares it); pinned. */
  private async privateL2(l1i: number): Promise<CacheEntry> {
    if (l1i >= this.ctx.l1Size) throw VdiskError.invalid(`L1 index ${l1i} past the L1 table`);
    const old = this.l2Offset(l1i);
    if (old !== 0 && l1Copied(this.ctx.l1, l1i)) return this.cache.get('l2', old);
    const host = await this.refcounts!.allocate(1);
    this.counters.allocatedClusters++;
    let e: CacheEntry;
    if (old === 0) {
      e = this.cache.create('l2', host);
    } else {
      const src = await this.cache.get('l2', old);
      e = this.cache.create('l2', host, src.buf);
      this.cache.unpin(src);
      this.refcounts!.free(old, this.cs);
    }
    setL1(this.ctx.l1, l1i, host, true);
    this.l1DirtyLo = Math.min(this.l1DirtyLo, l1i);
    this.l1DirtyHi = Math.max(this.l1DirtyHi, l1i);
    return e;
  }

  /** preallocation=metadata: every L2 table and data cluster allocated (data left sparse). */
  async preallocateMetadata(): Promise<void> {
    this.checkWritable();
    await this.mutex.run(async () => {
      const n = this.ctx.l2Entries;
      const clusters = Math.ceil(this.virtualSize / this.cs);
      for (let l1i = 0; l1i * n < clusters; l1i++) {
        const e = await this.privateL2(l1i);
        try {
          const count = Math.min(n, clusters - l1i * n);
          const host = await this.refcounts!.allocate(count);
          this.counters.allocatedClusters += count;
          for (let i = 0; i < count; i++) setL2Normal(e.buf, i, this.ctx.layout, host + i * this.cs, true);
          e.dirty = true;
        } finally {
          this.cache.unpin(e);
        }
        await this.cache.evict();
      }
      await this.file.truncate(this.refcounts!.nextFree * this.cs);
      await this.flushLocked();
    });
  }

  // ---- flush / close ----

  async flush(): Promise<void> {
    if (this.readOnly || this.closed) return;
    await this.mutex.run(() => this.flushLocked());
  }

  /** refcount blocks → datasync → L2 tables → datasync → L1 → datasync; then queued frees. */
  private async flushLocked(): Promise<void> {
    const rc = this.refcounts!;
    await rc.writePhase();
    const l2s = this.cache.dirty('l2');
    await this.writeL2s(l2s);
    if (this.l1DirtyHi >= 0) {
      if (l2s.length) await this.sync();
      const lo = this.l1DirtyLo * 8;
      const hi = (this.l1DirtyHi + 1) * 8;
      this.l1DirtyLo = Infinity;
      this.l1DirtyHi = -1;
      await this.file.write(Buffer.from(this.ctx.l1.subarray(lo, hi)), this.l1Offset + lo, 'l1');
      this.counters.metadataWrites++;
    }
    await this.sync();
    if (rc.hasPendingFrees) {
      await rc.applyFrees();
      await rc.writePhase();
    }
    log('flush %s: metadataWrites=%d dataWrites=%d hostFlushes=%d', this.path, this.counters.metadataWrites, this.counters.dataWrites, this.counters.hostFlushes);
  }

  /** Writes L2 tables; the refcounts they depend on are made durable first. */
  async writeL2s(entries: CacheEntry[]): Promise<void> {
    if (!entries.length) return;
    await this.refcounts!.writePhase();
    let i = 0;
    while (i < entries.length) {
      let j = i + 1;
      while (j < entries.length && entries[j]!.offset === entries[j - 1]!.offset + this.cs) j++;
      const run = entries.slice(i, j);
      for (const e of run) e.dirty = false;
      await this.file.write(run.map((e) => Buffer.from(e.buf)), run[0]!.offset, 'l2');
      this.counters.metadataWrites++;
      i = j;
    }
  }

  private async sync(): Promise<void> {
    await this.file.datasync('flush');
    if (this.dataFile !== this.file) await this.dataFile.datasync('flush');
    this.counters.hostFlushes++;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.readOnly) await this.flush();
      const st = this.stats().driver;
      log('close %s: metadataWrites=%d dataWrites=%d hostFlushes=%d cacheHits=%d cacheMisses=%d allocatedClusters=%d', this.path, st['metadataWrites'], st['dataWrites'], st['hostFlushes'], st['cacheHits'], st['cacheMisses'], st['allocatedClusters']);
    } finally {
      this.closed = true;
      await this.file.close();
      if (this.dataFile !== this.file) await this.dataFile.close();
      if (this.backing) await this.backing.close();
    }
  }

  // ---- map / resize / info ----

  async map(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length);
    if (length === 0) return [];
    const pieces = mapSync(this.ctx, offset, length) ?? (await this.mapLocked(offset, length));
    const out: Extent[] = [];
    for (const p of pieces) {
      let x: Extent;
      if (p.kind === KIND_NORMAL) x = { offset: p.guest, length: p.length, kind: 'data', hostOffset: p.host, hostFile: this.dataFile.path };
      else if (p.kind === KIND_COMPRESSED) x = { offset: p.guest, length: p.length, kind: 'data', compressed: true, hostFile: this.file.path };
      else if (p.kind === KIND_ZERO) x = { offset: p.guest, length: p.length, kind: 'zero' };
      else x = { offset: p.guest, length: p.length, kind: this.backing ? 'backing' : 'unallocated' };
      const prev = out[out.length - 1];
      if (prev && prev.kind === x.kind && prev.kind !== 'data') prev.length += x.length;
      else out.push(x);
    }
    return out;
  }

  async resize(newSize: number): Promise<void> {
    this.checkWritable();
    if (!Number.isSafeInteger(newSize) || newSize < this.virtualSize) throw VdiskError.invalid(`${this.path}: shrinking a qcow2 image is not supported (${this.virtualSize} -> ${newSize})`);
    if (newSize === this.virtualSize) return;
    await this.mutex.run(async () => {
      await this.flushLocked();
      const rc = this.refcounts!;
      const span = this.ctx.l2Entries * this.cs;
      const need = Math.ceil(newSize / span);
      let l1 = this.ctx.l1;
      let l1Off = this.l1Offset;
      if (need > this.ctx.l1Size) {
        if (need * 8 > MAX_L1_BYTES) throw new VdiskError('EFBIG', `${this.path}: ${newSize} bytes needs an L1 table beyond QEMU's limit`);
        const oldBytes = Math.ceil((this.ctx.l1Size * 8) / this.cs) * this.cs;
        l1 = Buffer.alloc(need * 8);
        this.ctx.l1.copy(l1);
        if (need * 8 <= oldBytes && this.ctx.l1Size > 0) {
          // The table's clusters have room: write the new (empty) entries in place.
          await this.file.write(l1.subarray(this.ctx.l1Size * 8), l1Off + this.ctx.l1Size * 8, 'l1');
        } else {
          const clusters = Math.ceil((need * 8) / this.cs);
          l1Off = await rc.allocate(clusters);
          this.counters.allocatedClusters += clusters;
          await rc.writePhase(); // the new table's refcounts durable before the header points at it
          await this.file.write(Buffer.concat([l1, Buffer.alloc(clusters * this.cs - l1.length)]), l1Off, 'l1');
          if (this.ctx.l1Size > 0) rc.free(this.l1Offset, oldBytes);
        }
        this.counters.metadataWrites++;
        await this.sync();
      }
      // size (24), crypt (32, unchanged 0), l1_size (36), l1_table_offset (40): one header write.
      const h = Buffer.alloc(24);
      h.writeBigUInt64BE(BigInt(newSize), 0);
      h.writeUInt32BE(0, 8);
      h.writeUInt32BE(Math.max(need, this.ctx.l1Size), 12);
      h.writeBigUInt64BE(BigInt(l1Off), 16);
      await this.file.write(h, 24, 'header');
      this.counters.metadataWrites++;
      await this.sync();
      this.ctx.l1 = l1;
      this.ctx.l1Size = l1.length / 8;
      this.l1Offset = l1Off;
      this.virtualSize = newSize;
      this.header.size = newSize;
      this.header.l1Size = this.ctx.l1Size;
      this.header.l1TableOffset = l1Off;
      if (rc.hasPendingFrees) {
        await rc.applyFrees();
        await rc.writePhase();
      }
    });
  }

  hostFiles(): string[] {
    return this.dataFile === this.file ? [this.path] : [this.path, this.dataFile.path];
  }

  stats(): ImageStats {
    const io: ImageStats['io'] = { [this.path]: { ...this.file.counters } };
    if (this.dataFile !== this.file) io[this.dataFile.path] = { ...this.dataFile.counters };
    return { io, driver: { ...this.counters, cacheHits: this.cache.hits, cacheMisses: this.cache.misses } };
  }

  async info(): Promise<ImageInfo> {
    const h = this.header;
    const st = await this.file.stat();
    const info: ImageInfo = {
      filename: this.path,
      format: 'qcow2',
      'virtual-size': this.virtualSize,
      'actual-size': st.blocks * 512,
      'cluster-size': this.cs,
      'dirty-flag': (h.incompatible & INCOMPAT_DIRTY) !== 0n,
    };
    if (this.meta.backingName !== undefined) {
      info['backing-filename'] = this.meta.backingName;
      if (this.backingPath) info['full-backing-filename'] = this.backingPath;
      if (this.meta.ext.backingFormat) info['backing-filename-format'] = this.meta.ext.backingFormat;
    }
    const snaps = await this.snapshots();
    if (snaps.length) info.snapshots = snaps.map(snapshotInfo);
    const data: Record<string, unknown> = {
      compat: h.version === 2 ? '0.10' : '1.1',
      'compression-type': h.compressionType === 1 ? 'zstd' : 'zlib',
      'refcount-bits': 1 << h.refcountOrder,
    };
    if (h.version === 3) {
      data['lazy-refcounts'] = (h.compatible & COMPAT_LAZY_REFCOUNTS) !== 0n;
      data['corrupt'] = (h.incompatible & INCOMPAT_CORRUPT) !== 0n;
      data['extended-l2'] = this.ctx.layout.extended;
    }
    if (this.meta.ext.dataFile) data['data-file'] = this.meta.ext.dataFile;
    info['format-specific'] = { type: 'qcow2', data };
    if (this.backing) info['backing-image'] = await this.backing.info();
    return info;
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.virtualSize) {
      throw VdiskError.invalid(`range ${offset}+${length} past the end of ${this.path} (${this.virtualSize} bytes)`);
    }
  }

  private checkWritable(): void {
    if (this.readOnly || !this.refcounts) throw VdiskError.readOnly(`${this.path} is open read-only`);
    if (this.closed) throw VdiskError.io(`${this.path} is closed`);
  }
}

function mapL2Offset(ctx: MapContext, l1i: number): number {
  const off = (ctx.l1.readUInt32BE(l1i * 8) & 0x00ffffff) * 2 ** 32 + ((ctx.l1.readUInt32BE(l1i * 8 + 4) & 0xfffffe00) >>> 0);
  if (off % 2 ** ctx.clusterBits !== 0) throw VdiskError.corrupt(`qcow2 L2 table offset ${off} (L1 index ${l1i}) not cluster aligned`);
  return off;
}
