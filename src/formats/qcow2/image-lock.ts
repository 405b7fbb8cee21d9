/**
 * The qcow2 image lock and L2 table pinning (split out of qcow2-image.ts). Table loads and every
 * metadata change run under the image lock: one range over everything in an OrderedRangeLock, a
 * FIFO mutex. A request that needs L2 tables missing from the cache loads and pins them under the
 * lock (guest reads, map), or only pins them (a write's COW reads, whose tables the write pinned).
 */
import { EVERYTHING, OrderedRangeLock } from '../../io/range-lock';
import { MapContext, tablesFor } from './mapping';
import type { CacheEntry, MetadataCache } from './metadata-cache';

export class ImageLock {
  private readonly lock = new OrderedRangeLock();

  constructor(
    private readonly ctx: MapContext,
    private readonly cache: MetadataCache,
  ) {}

  /** Metadata changes and table loads, one at a time, in call order. */
  run<T>(fn: () => Promise<T>): Promise<T> {
    return this.lock.run(0, EVERYTHING, false, fn);
  }

  /** Nothing holds the lock or waits for it: a synchronous change cannot come between another's steps. */
  get idle(): boolean {
    return this.lock.count === 0;
  }

  /** Runs `fn` under the lock with the L2 tables of the range loaded and pinned. */
  async withTablesLocked<T>(offset: number, length: number, fn: () => T): Promise<T> {
    return this.run(async () => {
      const pinned = await this.pinTables(offset, length);
      try {
        return fn();
      } finally {
        for (const e of pinned) this.cache.unpin(e);
        await this.cache.evict();
      }
    });
  }

  /** Without the lock (a write's COW read: its tables are pinned, this is a safety net). */
  async withTablesPinned<T>(offset: number, length: number, fn: () => T): Promise<T> {
    const pinned = await this.pinTables(offset, length);
    try {
      return fn();
    } finally {
      for (const e of pinned) this.cache.unpin(e);
    }
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
}
