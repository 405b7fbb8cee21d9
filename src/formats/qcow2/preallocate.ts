/**
 * preallocation=metadata: every L2 table and data cluster allocated, data left sparse (the file
 * is extended to cover them). Each L2 table waits for its refcounts; the caller flushes.
 */
import type { HostFile } from '../../io/host-file';
import type { L1Table } from './l1-table';
import type { MapContext } from './mapping';
import type { MetadataCache } from './metadata-cache';
import type { Refcounts } from './refcounts';
import { setL2Normal } from './table-entry';

export interface PreallocateParts {
  file: HostFile;
  ctx: MapContext;
  l1: L1Table;
  cache: MetadataCache;
  refcounts: Refcounts;
  counters: { allocatedClusters: number };
  virtualSize: number;
  /** How far it got, 0..1 (a 2 TiB image has 4,096 L2 tables to write). */
  progress?: (fraction: number) => void;
}

/** Under the image lock. */
export async function preallocateMetadata(p: PreallocateParts): Promise<void> {
  const { ctx, cache } = p;
  const cs = 2 ** ctx.clusterBits;
  const n = ctx.l2Entries;
  const clusters = Math.ceil(p.virtualSize / cs);
  for (let l1i = 0; l1i * n < clusters; l1i++) {
    const e = await p.l1.privateL2(l1i);
    try {
      const count = Math.min(n, clusters - l1i * n);
      const host = await p.refcounts.allocate(count);
      p.counters.allocatedClusters += count;
      await cache.dependOn(e, 'refblock');
      for (let i = 0; i < count; i++) setL2Normal(e.buf, i, ctx.layout, host + i * cs, true);
      e.dirty = true;
    } finally {
      cache.unpin(e);
    }
    await cache.evict();
    p.progress?.(((l1i + 1) * n) / clusters);
  }
  await p.file.truncate(p.refcounts.nextFree * cs);
}
