/**
 * A qcow2 image: reads, writes, zero writes, map, flush, resize. The mapping answers come from
 * mapping.ts; host cluster accounting from refcounts.ts; tables from the metadata cache.
 *
 * Concurrency: reads whose tables are cached run without the lock (one synchronous lookup, then
 * host I/O); loading tables and every metadata change run under `mutex`. Writes: write-path.ts.
 */
import createDebug from 'debug';
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import type { Extent, Image, ImageInfo, ImageStats } from '../types';
import { decompressCluster } from './compression';
import { discardRange } from './discard';
import { COMPAT_LAZY_REFCOUNTS, Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, INCOMPAT_EXTL2, MAX_L1_BYTES } from './header';
import { MapContext, mapSync, Piece, tablesFor } from './mapping';
import type { ImageMeta } from './meta';
import { CacheEntry, MetadataCache } from './metadata-cache';
import { Mutex } from './mutex';
import { WritePath } from './write-path';
import type { Refcounts } from './refcounts';
import { Snapshot, snapshotInfo } from './snapshot-table';
import {
  KIND_COMPRESSED,
  KIND_NORMAL,
  KIND_UNALLOCATED,
  KIND_ZERO,
  l1Copied,
  setL1,
  setL2Normal,
} from './table-entry';

const log = createDebug('vdiskfs:qcow2');
/** Discarded bytes whose frees wait for the next flush before one is forced (so space comes back soon). */
const FREE_BATCH_BYTES = 32 << 20;

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
  private readonly writer: WritePath;
  private l1Offset: number;
  private l1DirtyLo = Infinity;
  private l1DirtyHi = -1;
  private closed = false;
  private decompressed = new Map<number, Buffer>(); // small cache of inflated clusters by host offset
  private readonly lockFree = new Set<Promise<void>>();

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
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    this.writer = new WritePath({
      ctx: this.ctx,
      cache: this.cache,
      get refcounts() {
        return self.refcounts!;
      },
      dataFile: this.dataFile,
      counters: this.counters,
      mutex: this.mutex,
      zeroClusters: this.header.version === 3,
      hasBacking: !!this.backing,
      get virtualSize() {
        return self.virtualSize;
      },
      l2Offset: (l1i) => this.l2Offset(l1i),
      privateL2: (l1i) => this.privateL2(l1i),
      readLayer: (off, into) => this.readLayer(off, into),
    });
    // The L1 table is the root of the L2 side of the cache's write order.
    this.cache.setSide('l2', {
      lazy: false,
      lazyBarrier: async () => undefined,
      rootsDirty: () => this.l1DirtyHi >= 0,
      writeRoots: () => this.writeL1(),
    });
  }

  // ---- reads ----

  async read(offset: number, into: Buffer): Promise<void> {
    this.checkRange(offset, into.length);
    if (into.length === 0) return;
    await this.lockFreeIo(this.readUnlocked(offset, into));
  }

  private async readUnlocked(offset: number, into: Buffer): Promise<void> {
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
    if (await this.lockFreeIo(this.writer.tryDirect(offset, buf))) return;
    await this.writer.write(offset, buf, 'unallocated');
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
      await this.writer.write(at, part, 'all'); // v2: clusters already reading as zeros are skipped, others get real zeros
      done += n;
    }
  }

  /** discard.ts; frees pile up until a flush applies them, or this many bytes of them wait. */
  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length);
    if (length === 0) return;
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    await discardRange(
      {
        ctx: this.ctx,
        cache: this.cache,
        writer: this.writer,
        hasBacking: !!this.backing,
        zeroClusters: this.header.version === 3,
        get virtualSize() {
          return self.virtualSize;
        },
        l2Offset: (l1i) => this.l2Offset(l1i),
        privateL2: (l1i) => this.privateL2(l1i),
        writeZeroes: (o, n) => this.writeZeroes(o, n),
        map: (o, n) => this.map(o, n),
      },
      offset,
      length,
    );
    if (this.refcounts!.pendingFreeBytes >= FREE_BATCH_BYTES) await this.flush();
  }

  backingImage(): Image | undefined {
    return this.backing;
  }

  /**
   * Clusters whose refcount reached 0: punched (reads as zeros, space back to the host) and
   * handed to the allocator, once every lock-free read or write that may have looked up their
   * old mapping has finished. Without punching, they stay unused (new clusters must read as zeros).
   */
  private recycle(runs: { host: number; length: number }[]): void {
    if (runs.length === 0 || this.dataFile !== this.file) return;
    void Promise.allSettled([...this.lockFree]).then(() => {
      if (this.closed) return;
      for (const r of runs) {
        try {
          if (!this.file.punchHole(r.host, r.length, 'discard')) continue;
        } catch (e) {
          log('punching freed clusters at %d (+%d) failed: %s', r.host, r.length, (e as Error).message);
          continue;
        }
        this.refcounts!.addReusable(r.host / this.cs, r.length / this.cs);
      }
    });
  }

  /** Tracks I/O that runs without the image lock (see recycle). */
  private lockFreeIo<T>(p: Promise<T>): Promise<T> {
    const settled = p.then(() => undefined, () => undefined);
    this.lockFree.add(settled);
    void settled.then(() => this.lockFree.delete(settled));
    return p;
  }

  l2Offset(l1i: number): number {
    return this.ctx.l1.readUInt32BE(l1i * 8 + 4) === 0 && (this.ctx.l1.readUInt32BE(l1i * 8) & 0x00ffffff) === 0 ? 0 : mapL2Offset(this.ctx, l1i);
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
    await this.cache.dependOn(e, 'refblock'); // the L1 entry will point at a new cluster
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
          await this.cache.dependOn(e, 'refblock');
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

  /** Every dirty table and root in the cache's write order (metadata-cache.ts), then queued frees. */
  private async flushLocked(): Promise<void> {
    const rc = this.refcounts!;
    await this.cache.flush();
    if (rc.hasPendingFrees) {
      const zeroed = await rc.applyFrees();
      await this.cache.flush();
      this.recycle(zeroed);
    }
    log('flush %s: metadataWrites=%d dataWrites=%d hostFlushes=%d', this.path, this.counters.metadataWrites, this.counters.dataWrites, this.counters.hostFlushes);
  }

  /** The dirty part of the L1 table (the cache calls this once the L2 tables are durable). */
  private async writeL1(): Promise<void> {
    const lo = this.l1DirtyLo * 8;
    const hi = (this.l1DirtyHi + 1) * 8;
    this.l1DirtyLo = Infinity;
    this.l1DirtyHi = -1;
    await this.file.write(Buffer.from(this.ctx.l1.subarray(lo, hi)), this.l1Offset + lo, 'l1');
    this.counters.metadataWrites++;
  }

  /** The host barrier behind the cache's `sync()`: image file and data file. */
  async syncHost(): Promise<void> {
    await this.file.datasync('flush');
    if (this.dataFile !== this.file) await this.dataFile.datasync('flush');
    this.counters.hostFlushes++;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.readOnly) {
        await this.flush();
        if (this.refcounts?.lazyRefcounts?.marked) await this.mutex.run(() => this.refcounts!.setDirtyBit(false));
      }
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
      else {
        // Unallocated here: the backing file's bytes, or zeros past its end (or without one).
        const split = this.backing ? Math.min(Math.max(this.backing.virtualSize, p.guest), p.guest + p.length) : p.guest;
        if (split > p.guest) push(out, { offset: p.guest, length: split - p.guest, kind: 'backing' });
        if (split < p.guest + p.length) push(out, { offset: split, length: p.guest + p.length - split, kind: 'unallocated' });
        continue;
      }
      push(out, x);
    }
    return out;
  }

  async resize(newSize: number): Promise<void> {
    this.checkWritable();
    if (!Number.isSafeInteger(newSize) || newSize < this.virtualSize) throw VdiskError.invalid(`${this.path}: shrinking a qcow2 image is not supported (${this.virtualSize} -> ${newSize})`);
    if (newSize === this.virtualSize) return;
    if (newSize % 512 !== 0) throw VdiskError.invalid(`${this.path}: the new size must be a multiple of 512 (${newSize})`);
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
          await this.cache.flushSide('refblock'); // the new table's refcounts durable before the header points at it
          await this.file.write(Buffer.concat([l1, Buffer.alloc(clusters * this.cs - l1.length)]), l1Off, 'l1');
          if (this.ctx.l1Size > 0) rc.free(this.l1Offset, oldBytes);
        }
        this.counters.metadataWrites++;
        await this.cache.sync();
      }
      // size (24), crypt (32, unchanged 0), l1_size (36), l1_table_offset (40): one header write.
      const h = Buffer.alloc(24);
      h.writeBigUInt64BE(BigInt(newSize), 0);
      h.writeUInt32BE(0, 8);
      h.writeUInt32BE(Math.max(need, this.ctx.l1Size), 12);
      h.writeBigUInt64BE(BigInt(l1Off), 16);
      await this.file.write(h, 24, 'header');
      this.counters.metadataWrites++;
      await this.cache.sync();
      this.ctx.l1 = l1;
      this.ctx.l1Size = l1.length / 8;
      this.l1Offset = l1Off;
      this.virtualSize = newSize;
      this.header.size = newSize;
      this.header.l1Size = this.ctx.l1Size;
      this.header.l1TableOffset = l1Off;
      if (rc.hasPendingFrees) {
        const zeroed = await rc.applyFrees();
        await this.cache.flush();
        this.recycle(zeroed);
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

function push(out: Extent[], x: Extent): void {
  const prev = out[out.length - 1];
  if (prev && prev.kind === x.kind && prev.kind !== 'data') prev.length += x.length;
  else out.push(x);
}

function mapL2Offset(ctx: MapContext, l1i: number): number {
  const off = (ctx.l1.readUInt32BE(l1i * 8) & 0x00ffffff) * 2 ** 32 + ((ctx.l1.readUInt32BE(l1i * 8 + 4) & 0xfffffe00) >>> 0);
  if (off % 2 ** ctx.clusterBits !== 0) throw VdiskError.corrupt(`qcow2 L2 table offset ${off} (L1 index ${l1i}) not cluster aligned`);
  return off;
}
