/**
 * The active L1 table: which L2 table each index points at, making an L2 table private to this
 * layer (allocated, or copied when a snapshot shares it), and writing back the dirty entries.
 * The metadata cache calls `write()` once the L2 tables are durable (the L2 side's root).
 */
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { l2TableOffset, MapContext } from './mapping';
import type { CacheEntry, MetadataCache } from './metadata-cache';
import type { Refcounts } from './refcounts';
import { l1Copied, setL1 } from './table-entry';

export interface L1TableParts {
  ctx: MapContext;
  cache: MetadataCache;
  file: HostFile;
  /** Host offset of the table (changes when a resize moves it). */
  offset: number;
  refcounts: () => Refcounts;
  counters: { metadataWrites: number; allocatedClusters: number };
}

export class L1Table {
  offset: number;
  private dirtyLo = Infinity;
  private dirtyHi = -1;

  constructor(private readonly p: L1TableParts) {
    this.offset = p.offset;
  }

  get dirty(): boolean {
    return this.dirtyHi >= 0;
  }

  /** Host offset of the L2 table for an L1 index, 0 when none. */
  l2Offset(l1i: number): number {
    return l2TableOffset(this.p.ctx, l1i);
  }

  /** The L2 table for an L1 index, made private (allocated, or copied when a snapshot shares it); pinned. */
  async privateL2(l1i: number): Promise<CacheEntry> {
    const { ctx, cache } = this.p;
    if (l1i >= ctx.l1Size) throw VdiskError.invalid(`L1 index ${l1i} past the L1 table`);
    const old = this.l2Offset(l1i);
    if (old !== 0 && l1Copied(ctx.l1, l1i)) return cache.get('l2', old);
    const rc = this.p.refcounts();
    const host = await rc.allocate(1);
    this.p.counters.allocatedClusters++;
    let e: CacheEntry;
    if (old === 0) {
      e = cache.create('l2', host);
    } else {
      const src = await cache.get('l2', old);
      e = cache.create('l2', host, src.buf);
      cache.unpin(src);
    }
    try {
      await cache.dependOn(e, 'refblock'); // the L1 entry will point at a new cluster
    } catch (err) {
      // Nothing will point at the new table: no pin may keep it in the cache for good (it is
      // written back to its leaked cluster when evicted, harmlessly).
      cache.unpin(e);
      throw err;
    }
    // The shared table's decrement is queued only once the L1 entry points away from it (a
    // failed dependOn above leaves the L1 on the old table, which must keep its count).
    if (old !== 0) rc.free(old, 2 ** ctx.clusterBits);
    setL1(ctx.l1, l1i, host, true);
    this.dirtyLo = Math.min(this.dirtyLo, l1i);
    this.dirtyHi = Math.max(this.dirtyHi, l1i);
    return e;
  }

  /** The dirty part of the table. */
  async write(): Promise<void> {
    const lo = this.dirtyLo * 8;
    const hi = (this.dirtyHi + 1) * 8;
    this.dirtyLo = Infinity;
    this.dirtyHi = -1;
    try {
      await this.p.file.write(Buffer.from(this.p.ctx.l1.subarray(lo, hi)), this.offset + lo, 'l1');
    } catch (e) {
      // Still dirty: the next flush writes it again instead of taking it for written.
      this.dirtyLo = Math.min(this.dirtyLo, lo / 8);
      this.dirtyHi = Math.max(this.dirtyHi, hi / 8 - 1);
      throw e;
    }
    this.p.counters.metadataWrites++;
  }
}
