/**
 * The metadata cache's write order, rule by rule, against a fake backend that logs every table
 * write, root write and barrier. The crash-state tests check the same rules on real images.
 */
import { describe, expect, it } from 'vitest';
import { CacheEntry, MetadataCache, TableKind, TableSide } from '../../../src/formats/qcow2/metadata-cache';

const T = 512;

function make(opts: { capacity?: number; lazy?: boolean } = {}) {
  const log: string[] = [];
  const cache = new MetadataCache(opts.capacity ?? 64 * T, T, {
    load: async (_k: TableKind, off: number, into: Buffer) => void into.fill(off / T),
    write: async (k: TableKind, offset: number, bufs: Buffer[]) => {
      for (let i = 0; i < bufs.length; i++) log.push(`${k}@${offset / T + i}`);
    },
    sync: async () => void log.push('sync'),
  });
  const roots = { l2: false, refblock: false };
  let marked = false;
  const side = (kind: TableKind, lazy: boolean): TableSide => ({
    lazy,
    lazyBarrier: async () => {
      if (marked) return;
      log.push('dirty-bit');
      marked = true;
    },
    rootsDirty: () => roots[kind],
    writeRoots: async () => {
      roots[kind] = false;
      log.push(kind === 'l2' ? 'L1' : 'reftable');
    },
  });
  cache.setSide('l2', side('l2', false));
  cache.setSide('refblock', side('refblock', opts.lazy ?? false));
  return { cache, log, roots };
}

async function dirtyEntry(cache: MetadataCache, kind: TableKind, n: number): Promise<CacheEntry> {
  const e = await cache.get(kind, n * T);
  e.dirty = true;
  cache.unpin(e);
  return e;
}

/** Position of an event in the log (fails the test when it is missing). */
function at(log: string[], what: string): number {
  const i = log.indexOf(what);
  expect(i, `${what} in ${log.join(' ')}`).toBeGreaterThanOrEqual(0);
  return i;
}

describe('metadata cache write order', () => {
  it('rule 1: an L2 table pointing at new data is written after a barrier that follows the data write', async () => {
    const { cache, log } = make();
    await cache.sync(); // an old barrier must not count
    log.length = 0;
    const l2 = await dirtyEntry(cache, 'l2', 1);
    const data = cache.trackData(Promise.resolve().then(() => void log.push('data')));
    await data.done;
    cache.pointsAtData(l2, data);
    await cache.flush();
    expect(log.slice(0, 3)).toEqual(['data', 'sync', 'l2@1']);
  });

  it('rule 1: an L2 table pointing at a data write still in flight waits for it to complete', async () => {
    const { cache, log } = make();
    const l2 = await dirtyEntry(cache, 'l2', 1);
    let finish!: () => void;
    const data = cache.trackData(new Promise<void>((r) => (finish = r)).then(() => void log.push('data')));
    cache.pointsAtData(l2, data);
    const flushing = cache.flush();
    await new Promise((r) => setImmediate(r));
    expect(log).not.toContain('l2@1');
    finish();
    await flushing;
    expect(at(log, 'data')).toBeLessThan(at(log, 'sync'));
    expect(at(log, 'sync')).toBeLessThan(at(log, 'l2@1'));
  });

  it('rule 2: refcount blocks and the refcount table, a barrier, then the L2 table that uses them', async () => {
    const { cache, log, roots } = make();
    const rb = await dirtyEntry(cache, 'refblock', 5);
    roots.refblock = true;
    const l2 = await dirtyEntry(cache, 'l2', 1);
    await cache.dependOn(l2, 'refblock');
    await cache.flush();
    // Blocks, barrier, table (rule 3), barrier, L2 table, final barrier.
    expect(log).toEqual(['refblock@5', 'sync', 'reftable', 'sync', 'l2@1', 'sync']);
    expect(rb.dirty).toBe(false);
  });

  it('rule 2, lazy refcounts: the L2 table waits for the dirty bit, never for the refcount blocks', async () => {
    const { cache, log } = make({ capacity: T, lazy: true });
    const l2 = await dirtyEntry(cache, 'l2', 1);
    await dirtyEntry(cache, 'refblock', 5);
    await cache.dependOn(l2, 'refblock');
    // Evicting the L2 table alone (LRU: it is the oldest) must not write refcount blocks first.
    await cache.evict();
    expect(log).toEqual(['dirty-bit', 'l2@1']);
  });

  it('lazy refcounts keep the data barrier', async () => {
    const { cache, log } = make({ lazy: true });
    const l2 = await dirtyEntry(cache, 'l2', 1);
    await dirtyEntry(cache, 'refblock', 5);
    await cache.dependOn(l2, 'refblock');
    const data = cache.trackData(Promise.resolve().then(() => void log.push('data')));
    await data.done;
    cache.pointsAtData(l2, data);
    await cache.flush();
    expect(at(log, 'data')).toBeLessThan(at(log, 'sync'));
    expect(at(log, 'sync')).toBeLessThan(at(log, 'l2@1'));
  });

  it('rule 3: the L1 table is written after the L2 tables it points at are durable', async () => {
    const { cache, log, roots } = make();
    await dirtyEntry(cache, 'l2', 1);
    await dirtyEntry(cache, 'l2', 2);
    roots.l2 = true;
    await cache.flush();
    expect(log).toEqual(['l2@1', 'l2@2', 'sync', 'L1', 'sync']);
  });

  it('rule 4: a refcount decrement is written after the dropped reference (L2 tables and L1) is durable', async () => {
    const { cache, log, roots } = make({ capacity: T });
    const rb = await dirtyEntry(cache, 'refblock', 5); // oldest: the one evicted
    await dirtyEntry(cache, 'l2', 1);
    roots.l2 = true;
    await cache.dependOn(rb, 'l2');
    await cache.evict();
    expect(log).toEqual(['l2@1', 'sync', 'L1', 'sync', 'refblock@5']);
  });

  it('a dependency on a side with nothing unwritten costs nothing', async () => {
    const { cache, log } = make();
    const rb = await dirtyEntry(cache, 'refblock', 5);
    await cache.dependOn(rb, 'l2');
    await cache.flush();
    expect(log).toEqual(['refblock@5', 'sync']);
  });

  it('the two directions never wait on each other: declaring a free settles pending allocations first', async () => {
    const { cache, log } = make();
    const rb = await dirtyEntry(cache, 'refblock', 5);
    const l2 = await dirtyEntry(cache, 'l2', 1);
    await cache.dependOn(l2, 'refblock'); // allocation: L2 after refcounts
    await cache.dependOn(rb, 'l2'); // then a free in the same block: refcounts first go out now
    expect(log).toEqual(['refblock@5', 'sync']);
    rb.dirty = true; // the decrement
    await cache.flush();
    expect(log).toEqual(['refblock@5', 'sync', 'l2@1', 'sync', 'refblock@5', 'sync']);
  });

  it('rules hold on eviction: a dirty L2 victim goes out after its refcounts, clean victims are just dropped', async () => {
    const { cache, log } = make({ capacity: 2 * T });
    const l2 = await dirtyEntry(cache, 'l2', 1);
    await cache.dependOn(l2, 'refblock'); // nothing dirty yet on the refcount side: no wait
    const l2b = await dirtyEntry(cache, 'l2', 2);
    await dirtyEntry(cache, 'refblock', 5);
    await cache.dependOn(l2b, 'refblock');
    await cache.get('l2', 3 * T).then((e) => cache.unpin(e));
    await cache.get('l2', 4 * T).then((e) => cache.unpin(e));
    await cache.evict();
    expect(log).toEqual(['refblock@5', 'sync', 'l2@1', 'l2@2']);
    expect(cache.peek(T)).toBeUndefined();
    expect(cache.peek(2 * T)).toBeUndefined();
  });
});

describe('MetadataCache.readRunUncached', () => {
  it('reads adjacent tables in one load and lays each cached (newer, maybe dirty) copy over the file bytes', async () => {
    const { cache } = make();
    const e = await dirtyEntry(cache, 'l2', 3);
    e.buf.fill(0xee);
    const run = Buffer.alloc(4 * T);
    await cache.readRunUncached('l2', 2 * T, run);
    expect([run[0], run[T], run[2 * T], run[3 * T + T - 1]]).toEqual([2, 0xee, 2, 2]); // the fake file fills a load with its first table's number
    expect(cache.peek(2 * T)).toBeUndefined(); // nothing it read was cached
  });
});
