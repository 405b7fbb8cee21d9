/**
 * A qcow2 image: reads, writes, zero writes, map, flush, resize. The mapping answers come from
 * mapping.ts; host cluster accounting from refcounts.ts; tables from the metadata cache; the L1
 * table from l1-table.ts. Reads (and COW reads) go through the shared data path
 * (../data-path.ts) with read-access.ts's answers; resize.ts, image-info.ts, extents.ts (map),
 * discard.ts and preallocate.ts do one entry point each.
 *
 * Concurrency: reads whose tables are cached run without the lock (synchronous lookups, then
 * host I/O); loading tables and every metadata change run under the image lock (image-lock.ts:
 * one range over everything in an OrderedRangeLock, a FIFO mutex). Writes: write-path.ts. Freed
 * clusters wait for the lock-free I/O that may still see them (freed-clusters.ts).
 */
import createDebug from 'debug';
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { InFlight } from '../../io/settle';
import { checkRange, readThrough, readThroughSync } from '../data-path';
import type { Extent, Image, ImageInfo, ImageStats } from '../types';
import { CompressedClusters } from './compression';
import { discardRange } from './discard';
import { toExtents } from './extents';
import { Header, INCOMPAT_EXTL2 } from './header';
import { qcow2Info } from './image-info';
import { FreedClusters } from './freed-clusters';
import { ImageLock } from './image-lock';
import { L1Table } from './l1-table';
import { l2TableOffset, MapContext, mapSync, newMapContext, tablesFor, type Piece } from './mapping';

/** How much of adjacent L2 tables map() reads at once when they are not cached. */
const MAP_RUN_BYTES = 1 << 20;
import type { ImageMeta } from './meta';
import type { MetadataCache } from './metadata-cache';
import { preallocateMetadata } from './preallocate';
import { Qcow2Access } from './read-access';
import type { Refcounts } from './refcounts';
import { growImage } from './resize';
import type { Snapshot } from './snapshot-table';
import { WritePath } from './write-path';

const log = createDebug('vdiskfs:qcow2');
/** Discarded bytes whose frees wait for the next flush before one is forced (so space comes back soon). */
const FREE_BATCH_BYTES = 32 << 20;

export interface DriverCounters {
  metadataWrites: number;
  dataWrites: number;
  hostFlushes: number;
  allocatedClusters: number;
  /** Of those, clusters allocated by a synchronous write (WritePath.tryAllocateSync). */
  syncAllocatedClusters: number;
  /** Of those, clusters a larger write allocated without a plan or the image lock (WritePath.tryAllocate). */
  directAllocatedClusters: number;
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
  private readonly imageLock: ImageLock;
  private readonly writer: WritePath;
  private readonly l1: L1Table;
  private closed = false;
  /** Requests running (close waits for them). */
  private readonly inFlight = new InFlight();
  /** Guest reads: tables missing from the cache are loaded under the lock. */
  private readonly reads: Qcow2Access;
  /** COW reads of this layer during a write, whose tables the write has pinned. */
  private readonly cowReads: Qcow2Access;
  private readonly freed: FreedClusters;

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
    const extended = (this.header.incompatible & INCOMPAT_EXTL2) !== 0n;
    this.ctx = newMapContext(this.header.clusterBits, extended, this.dataFile !== this.file, p.l1, this.cache);
    this.imageLock = new ImageLock(this.ctx, this.cache);
    this.freed = new FreedClusters(
      this.file,
      this.dataFile,
      this.cs,
      this.cache,
      () => this.refcounts!,
      () => this.closed,
    );
    const access = {
      ctx: this.ctx,
      file: this.file,
      dataFile: this.dataFile,
      backing: this.backing,
      inflater: new CompressedClusters(this.file, this.cs, this.header.compressionType),
    };
    this.reads = new Qcow2Access({ ...access, withTables: (o, n, fn) => this.imageLock.withTablesLocked(o, n, fn) });
    this.cowReads = new Qcow2Access({ ...access, withTables: (o, n, fn) => this.imageLock.withTablesPinned(o, n, fn) });
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    this.l1 = new L1Table({
      ctx: this.ctx,
      cache: this.cache,
      file: this.file,
      offset: p.l1Offset,
      refcounts: () => self.refcounts!,
      counters: this.counters,
    });
    this.writer = new WritePath({
      ctx: this.ctx,
      cache: this.cache,
      get refcounts() {
        return self.refcounts!;
      },
      dataFile: this.dataFile,
      counters: this.counters,
      locked: (fn) => this.imageLock.run(fn),
      lockIdle: () => this.imageLock.idle,
      zeroClusters: this.header.version === 3,
      hasBacking: !!this.backing,
      get virtualSize() {
        return self.virtualSize;
      },
      l2Offset: (l1i) => this.l1.l2Offset(l1i),
      privateL2: (l1i) => this.l1.privateL2(l1i),
      readLayer: (off, into) => readThrough(this.cowReads, off, into), // this layer's content for COW
    });
    // The L1 table is the root of the L2 side of the cache's write order.
    this.cache.setSide('l2', {
      lazy: false,
      lazyBarrier: async () => undefined,
      rootsDirty: () => this.l1.dirty,
      writeRoots: () => this.l1.write(),
    });
  }

  // ---- reads ----

  async read(offset: number, into: Buffer): Promise<void> {
    checkRange(this, offset, into.length);
    if (into.length === 0) return;
    await this.freed.lockFreeIo(readThrough(this.reads, offset, into));
  }

  /** read() without waiting: L2 tables cached, small data/zero pieces only (data-path.ts readThroughSync); false: nothing done. */
  readSync(offset: number, into: Buffer): boolean {
    checkRange(this, offset, into.length);
    return readThroughSync(this.reads, offset, into);
  }

  // ---- writes ----

  write(offset: number, data: Buffer | Buffer[]): Promise<void> {
    return this.inFlight.track(this.writeNow(offset, data));
  }

  private async writeNow(offset: number, data: Buffer | Buffer[]): Promise<void> {
    const buf = Array.isArray(data) ? (data.length === 1 ? data[0]! : Buffer.concat(data)) : data;
    this.checkWritable();
    checkRange(this, offset, buf.length);
    if (buf.length === 0) return;
    if (await this.freed.lockFreeIo(this.writer.tryDirect(offset, buf))) return;
    const allocating = this.writer.tryAllocate(offset, buf);
    if (allocating) await allocating;
    else await this.writer.write(offset, buf, 'unallocated');
  }

  /**
   * write() without waiting, for a small write: clusters all written in place, or all new ones
   * allocated at once, tables and refcount blocks cached (WritePath.tryDirectSync,
   * tryAllocateSync); false: nothing done.
   */
  writeSync(offset: number, data: Buffer): boolean {
    this.checkWritable();
    checkRange(this, offset, data.length);
    return this.writer.tryDirectSync(offset, data) || this.writer.tryAllocateSync(offset, data);
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.inFlight.track(this.writeZeroesNow(offset, length));
  }

  private async writeZeroesNow(offset: number, length: number): Promise<void> {
    this.checkWritable();
    checkRange(this, offset, length);
    // Bounded chunks: one zero buffer, reused (only partial clusters ever copy from it).
    const chunk = Math.max(this.cs, 4 << 20);
    const zeros = Buffer.alloc(Math.min(length, chunk));
    for (let done = 0; done < length;) {
      const n = Math.min(zeros.length, length - done);
      const part = n === zeros.length ? zeros : zeros.subarray(0, n);
      const at = offset + done;
      await this.writer.write(at, part, 'all'); // v2: clusters already reading as zeros are skipped, others get real zeros
      done += n;
    }
  }

  /** discard.ts; frees pile up until a flush applies them, or this many bytes of them wait. */
  discard(offset: number, length: number): Promise<void> {
    return this.inFlight.track(this.discardNow(offset, length));
  }

  private async discardNow(offset: number, length: number): Promise<void> {
    this.checkWritable();
    checkRange(this, offset, length);
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
        l2Offset: (l1i) => this.l1.l2Offset(l1i),
        privateL2: (l1i) => this.l1.privateL2(l1i),
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

  /** preallocation=metadata: every L2 table and data cluster allocated (data left sparse). */
  async preallocateMetadata(progress?: (fraction: number) => void): Promise<void> {
    this.checkWritable();
    await this.imageLock.run(async () => {
      const parts = {
        file: this.file,
        ctx: this.ctx,
        l1: this.l1,
        cache: this.cache,
        refcounts: this.refcounts!,
        counters: this.counters,
        virtualSize: this.virtualSize,
        progress,
      };
      await preallocateMetadata(parts);
      await this.flushLocked();
    });
  }

  // ---- flush / close ----

  async flush(): Promise<void> {
    if (this.readOnly || this.closed) return;
    await this.imageLock.run(() => this.flushLocked());
  }

  /** Every dirty table and root in the cache's write order (metadata-cache.ts), then queued frees. */
  private async flushLocked(): Promise<void> {
    await this.cache.flush();
    await this.freed.applyFrees();
    log(
      'flush %s: metadataWrites=%d dataWrites=%d hostFlushes=%d',
      this.path,
      this.counters.metadataWrites,
      this.counters.dataWrites,
      this.counters.hostFlushes,
    );
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
        // A write still in flight commits its L2 entries when its data lands: before the flush.
        await this.inFlight.drained();
        await this.writer.drain();
        await this.flush();
        if (this.refcounts?.lazyRefcounts?.marked) await this.imageLock.run(() => this.refcounts!.setDirtyBit(false));
      }
      // Counted only when someone reads the debug log: a listing opens and closes thousands of images.
      const st = log.enabled ? this.stats().driver : {};
      if (log.enabled)
        log(
          'close %s: metadataWrites=%d dataWrites=%d hostFlushes=%d cacheHits=%d cacheMisses=%d allocatedClusters=%d',
          this.path,
          st['metadataWrites'],
          st['dataWrites'],
          st['hostFlushes'],
          st['cacheHits'],
          st['cacheMisses'],
          st['allocatedClusters'],
        );
    } finally {
      this.closed = true;
      await this.file.close();
      if (this.dataFile !== this.file) await this.dataFile.close();
      if (this.backing) await this.backing.close();
    }
  }

  // ---- map / resize / info ----

  async map(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length);
    if (length === 0) return [];
    const pieces = mapSync(this.ctx, offset, length) ?? (await this.mapTableByTable(offset, length));
    return toExtents(pieces, { image: this.file.path, data: this.dataFile.path }, this.backing?.virtualSize);
  }

  /**
   * map() of a range whose tables are not all cached (`vdiskfs map` of a whole disk, SEEK_DATA):
   * under the image lock, a table not cached is read, with the tables that follow it on the host
   * for the next L1 entries (up to MAP_RUN_BYTES), into one scratch buffer rather than into the
   * cache. Walking 2 TiB of tables so neither evicts what reads and writes use, nor leaves
   * hundreds of megabytes of dead table buffers to the collector, and a preallocated image's
   * tables cost one read per 16 rather than one each. The scratch is trusted only while the lock
   * is held: a write may change a table as soon as it is released.
   */
  private async mapTableByTable(offset: number, length: number): Promise<Piece[]> {
    const cs = 2 ** this.ctx.clusterBits;
    const span = this.ctx.l2Entries * cs;
    const end = offset + length;
    const out: Piece[] = [];
    for (let pos = offset; pos < end;) {
      const at = pos;
      pos = await this.imageLock.run(async () => {
        const l1i = Math.floor(at / span);
        const tableStop = Math.min(end, (l1i + 1) * span);
        const cached = mapSync(this.ctx, at, tableStop - at);
        if (cached) {
          for (const p of cached) out.push(p);
          return tableStop;
        }
        const first = tablesFor(this.ctx, at, tableStop - at)[0]!;
        const lastL1 = Math.floor((end - 1) / span);
        let count = 1;
        while (count < MAP_RUN_BYTES / cs && l1i + count <= lastL1 && l2TableOffset(this.ctx, l1i + count) === first + count * cs) count++;
        const scratch = (this.mapScratch ??= Buffer.alloc(Math.max(MAP_RUN_BYTES, cs))).subarray(0, count * cs);
        await this.cache.readRunUncached('l2', first, scratch);
        const peek = (o: number) =>
          o >= first && o < first + count * cs && (o - first) % cs === 0 ? scratch.subarray(o - first, o - first + cs) : undefined;
        const stop = Math.min(end, (l1i + count) * span);
        for (const p of mapSync({ ...this.ctx, cache: { peek } }, at, stop - at)!) out.push(p);
        return stop;
      });
    }
    return out;
  }

  /** Tables read in one go by mapTableByTable (used under the image lock only). */
  private mapScratch?: Buffer;

  async resize(newSize: number): Promise<void> {
    this.checkWritable();
    if (!Number.isSafeInteger(newSize) || newSize < this.virtualSize)
      throw VdiskError.invalid(`${this.path}: shrinking a qcow2 image is not supported (${this.virtualSize} -> ${newSize})`);
    if (newSize === this.virtualSize) return;
    if (newSize % 512 !== 0) throw VdiskError.invalid(`${this.path}: the new size must be a multiple of 512 (${newSize})`);
    await this.imageLock.run(async () => {
      await this.flushLocked();
      const rc = this.refcounts!;
      await growImage(
        {
          path: this.path,
          file: this.file,
          header: this.header,
          ctx: this.ctx,
          l1: this.l1,
          cache: this.cache,
          refcounts: rc,
          counters: this.counters,
        },
        newSize,
      );
      this.virtualSize = newSize;
      await this.freed.applyFrees();
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
    return qcow2Info({
      path: this.path,
      file: this.file,
      meta: this.meta,
      virtualSize: this.virtualSize,
      extendedL2: this.ctx.layout.extended,
      backing: this.backing,
      backingPath: this.backingPath,
      snapshots: this.snapshots,
    });
  }

  private checkWritable(): void {
    if (this.readOnly || !this.refcounts) throw VdiskError.readOnly(`${this.path} is open read-only`);
    if (this.closed) throw VdiskError.io(`${this.path} is closed`);
  }
}
