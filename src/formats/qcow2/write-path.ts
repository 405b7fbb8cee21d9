/**
 * The write path. A request whose clusters are all private and allocated (and whose L2 tables
 * are cached) is one host write per host-contiguous run, with no lock and no metadata I/O.
 * A request whose clusters all read as zeros without a host cluster, in one cached table, takes
 * new clusters at once (reserveNew: tryAllocateSync for a small one, tryAllocate otherwise).
 * Everything else goes in three steps:
 *   0. the request's guest clusters are taken in `clusters`, a range lock (src/io/range-lock.ts)
 *      held until step 3 is done: a request touching a cluster another write has in flight
 *      waits until that write ends, so no cluster is allocated twice, and a discard does not
 *      change L2 entries between a write's plan and its commit;
 *   1. plan, under the image lock: L2 tables made private where something changes, host runs
 *      allocated (one contiguous run per stretch of clusters that needs new ones), zero
 *      clusters set;
 *   2. data, without the image lock: COW reads and one vectored write per run (head COW +
 *      payload + tail COW; COW that reads as zeros is skipped since new clusters are pristine);
 *   3. commit, under the image lock: the L2 entries now point at the written data.
 * Lock order: guest clusters first, then the image lock, never the reverse (nothing waits for
 * clusters while holding the image lock), so the two never deadlock.
 * Clusters that already own a private host cluster: cluster-reuse.ts.
 * Write order: each changed L2 table declares what it waits for (the refcounts of new clusters,
 * the data written to them); the metadata cache writes it back only after those are durable.
 */
import { SYNC_IO_MAX, type HostFile } from '../../io/host-file';
import { EVERYTHING, OrderedRangeLock } from '../../io/range-lock';
import { isAllZero } from '../all-zero';
import { mapSync, MapContext } from './mapping';
import { EntryOf, Plan, planSubclusters, planZeroAllocated, privateHost, trackData } from './cluster-reuse';
import type { CacheEntry, DataWrite, MetadataCache } from './metadata-cache';
import type { Refcounts } from './refcounts';
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
  l2ZeroBits,
  setL2Extended,
  setL2Normal,
  setL2Zero,
  setL2ZeroAllocated,
  subclusterMask,
} from './table-entry';

export type ZeroMode = 'none' | 'unallocated' | 'all';

export interface WriteCounters {
  dataWrites: number;
  allocatedClusters: number;
  syncAllocatedClusters: number;
  directAllocatedClusters: number;
}

/** What the write path needs from its image. */
/** What changing L2 entries needs of the image: the write path's and discard's common part. */
export interface L2Access {
  readonly ctx: MapContext;
  readonly cache: MetadataCache;
  /** qcow2 v3: zero clusters exist. */
  readonly zeroClusters: boolean;
  readonly hasBacking: boolean;
  readonly virtualSize: number;
  l2Offset(l1i: number): number;
  /** The L2 table for an L1 index, allocated or copied when shared; pinned. */
  privateL2(l1i: number): Promise<CacheEntry>;
}

export interface LayerAccess extends L2Access {
  readonly refcounts: Refcounts;
  readonly dataFile: HostFile;
  readonly counters: WriteCounters;
  /** Runs `fn` under the image lock (metadata changes, one at a time, FIFO). */
  locked<T>(fn: () => Promise<T>): Promise<T>;
  /** Nothing holds the image lock or waits for it (a synchronous change may go ahead). */
  lockIdle(): boolean;
  /** This layer's current content (data, zeros, backing) for COW; tables must be pinned. */
  readLayer(offset: number, into: Buffer): Promise<void>;
}

/** Clusters reserved by reserveNew: guest clusters [c0, c0+k) at host, entries i0.. of table e. */
interface NewClusters {
  e: CacheEntry;
  i0: number;
  c0: number;
  k: number;
  host: number;
}

/** One host write of an in-place write: buf[from, to) at host. */
interface DirectRun {
  host: number;
  from: number;
  to: number;
}

export class WritePath {
  private readonly cs: number;
  /** Guest clusters (indexes) a write or discard has in flight, from its plan to its commit. */
  private readonly clusters = new OrderedRangeLock();

  constructor(private readonly a: LayerAccess) {
    this.cs = 2 ** a.ctx.clusterBits;
  }

  /** Host offset of a cluster that can be overwritten in place, or -1. */
  directHost(t: Buffer, l2i: number): number {
    const l = this.a.ctx.layout;
    if (l2Kind(t, l2i, l) !== KIND_NORMAL || !l2Copied(t, l2i, l)) return -1;
    if (l.extended && l2AllocBits(t, l2i, l) !== 0xffffffff) return -1;
    return l2HostOffset(t, l2i, l);
  }

  /**
   * Where an in-place write of `buf` at `offset` goes: host-contiguous runs, or undefined when
   * some cluster needs the slow path (not allocated, shared, partly allocated, table not cached).
   */
  private directRuns(offset: number, length: number): DirectRun[] | undefined {
    const { ctx, cache } = this.a;
    const cs = this.cs;
    const runs: DirectRun[] = [];
    const end = offset + length;
    let pos = offset;
    let t: Buffer | undefined;
    let tl1 = -1;
    while (pos < end) {
      const gc = Math.floor(pos / cs);
      const l1i = Math.floor(gc / ctx.l2Entries);
      if (l1i !== tl1) {
        if (l1i >= ctx.l1Size || !l1Copied(ctx.l1, l1i)) return undefined;
        const off = this.a.l2Offset(l1i);
        t = off ? cache.peek(off) : undefined;
        if (!t) return undefined;
        tl1 = l1i;
      }
      const host = this.directHost(t!, gc % ctx.l2Entries);
      if (host < 0) return undefined;
      const cEnd = Math.min(end, (gc + 1) * cs);
      const h = host + (pos - gc * cs);
      const last = runs[runs.length - 1];
      if (last && last.host + (last.to - last.from) === h) last.to = cEnd - offset;
      else runs.push({ host: h, from: pos - offset, to: cEnd - offset });
      pos = cEnd;
    }
    return runs;
  }

  /** Lock-free fast path; false when some cluster needs the slow path. */
  async tryDirect(offset: number, buf: Buffer): Promise<boolean> {
    const runs = this.directRuns(offset, buf.length);
    if (!runs) return false;
    // Every run ends before the request does, also when one fails: a run still in flight could
    // land after a later write to its range, or after freed-clusters.ts (which waits for this
    // promise) has punched and reused its cluster.
    const settled = await Promise.allSettled(runs.map((r) => this.a.dataFile.write(buf.subarray(r.from, r.to), r.host, 'data')));
    this.a.counters.dataWrites += runs.length;
    for (const r of settled) if (r.status === 'rejected') throw r.reason;
    return true;
  }

  /**
   * tryDirect() in one synchronous step, for a small write (SYNC_IO_MAX) whose clusters are all
   * written in place: no promise, no copy of `buf`. Nothing is awaited between the lookup and the
   * host write, so no L2 change can come between them (the lock-free I/O that freed-clusters.ts
   * waits for is already over when this returns). False: nothing done.
   */
  tryDirectSync(offset: number, buf: Buffer): boolean {
    if (buf.length > SYNC_IO_MAX) return false;
    const runs = this.directRuns(offset, buf.length);
    if (!runs) return false;
    for (const r of runs) this.a.dataFile.writeSync(buf.subarray(r.from, r.to), r.host, 'data');
    this.a.counters.dataWrites += runs.length;
    return true;
  }

  /**
   * The allocating write in one synchronous step, for a small write (SYNC_IO_MAX): reserveNew()
   * takes new clusters, the payload is written at once at its place in them, then the L2
   * entries are set. Nothing is awaited, so no other change comes between the checks and the
   * commit. False: nothing done. A failed data write leaks the new clusters, as the slow path's does.
   */
  tryAllocateSync(offset: number, buf: Buffer): boolean {
    if (buf.length > SYNC_IO_MAX) return false;
    const r = this.reserveNew(offset, buf);
    if (!r) return false;
    this.a.counters.syncAllocatedClusters += r.k;
    this.a.dataFile.writeSync(buf, r.host + (offset - r.c0 * this.cs), 'data');
    this.a.counters.dataWrites++;
    this.commitNew(r, this.a.cache.dataWritten());
    return true;
  }

  /**
   * The same allocating write for a larger one, its data written without blocking: the clusters
   * are reserved synchronously as in tryAllocateSync, held in the cluster range lock and their
   * table pinned while the data goes out, then the entries are set, at once when the image lock
   * is idle, else under it (a flush or eviction may be writing the table's buffer). What a
   * sequential write into a fresh image takes: no plan, no image lock, one host write.
   * Undefined: nothing done (the slow path's case).
   */
  tryAllocate(offset: number, buf: Buffer): Promise<void> | undefined {
    const r = this.reserveNew(offset, buf);
    if (!r) return undefined;
    this.a.counters.directAllocatedClusters += r.k;
    const lease = this.clusters.acquire(r.c0, r.c0 + r.k, false); // free: reserveNew checked wouldWait
    this.a.cache.pin(r.e);
    return this.finishNew(r, offset, buf).finally(() => {
      this.a.cache.unpin(r.e);
      lease.release();
    });
  }

  private async finishNew(r: NewClusters, offset: number, buf: Buffer): Promise<void> {
    this.a.counters.dataWrites++;
    // A failed write commits nothing: the new clusters leak, nothing points at garbage.
    const written = await trackData(this.a.cache, this.a.dataFile.write(buf, r.host + (offset - r.c0 * this.cs), 'data'));
    if (this.a.lockIdle()) this.commitNew(r, written);
    else await this.a.locked(async () => this.commitNew(r, written));
  }

  /**
   * New contiguous host clusters for a write whose clusters all read as zeros without a host
   * cluster (unallocated without a backing file, or zero), in one cached private L2 table, while
   * nothing holds the image lock and no write has them in flight: from Refcounts.allocateSync
   * (blocks cached), the table declared to wait for the refcount increments. The payload goes at
   * its place in them; the rest reads as zeros already (new clusters lie past the end or were
   * punched, as planRun relies on too). Undefined: nothing changed.
   */
  private reserveNew(offset: number, buf: Buffer): NewClusters | undefined {
    const { ctx, cache } = this.a;
    const l = ctx.layout;
    if (l.extended || l.dataFile || this.a.hasBacking || !this.a.lockIdle()) return undefined;
    const cs = this.cs;
    const c0 = Math.floor(offset / cs);
    const k = Math.floor((offset + buf.length - 1) / cs) - c0 + 1;
    const l1i = Math.floor(c0 / ctx.l2Entries);
    if (Math.floor((c0 + k - 1) / ctx.l2Entries) !== l1i || l1i >= ctx.l1Size || !l1Copied(ctx.l1, l1i)) return undefined;
    if (this.clusters.wouldWait(c0, c0 + k, false)) return undefined;
    const tableOffset = this.a.l2Offset(l1i);
    const e = tableOffset ? cache.peekEntry(tableOffset) : undefined;
    if (!e) return undefined;
    const i0 = c0 % ctx.l2Entries;
    for (let i = i0; i < i0 + k; i++) {
      const kind = l2Kind(e.buf, i, l);
      if (kind !== KIND_UNALLOCATED && !(kind === KIND_ZERO && l2HostOffset(e.buf, i, l) === 0)) return undefined;
    }
    // All zeros: the slow path may leave a cluster unallocated instead.
    if (isAllZero(buf) || !cache.canDependOnSync(e, 'refblock')) return undefined;
    const host = this.a.refcounts.allocateSync(k);
    if (host < 0) return undefined;
    this.a.counters.allocatedClusters += k;
    cache.dependOnSync(e, 'refblock');
    return { e, i0, c0, k, host };
  }

  /** The L2 entries of reserved clusters point at their data, which `written` wrote. */
  private commitNew(r: NewClusters, written: DataWrite): void {
    const l = this.a.ctx.layout;
    for (let j = 0; j < r.k; j++) setL2Normal(r.e.buf, r.i0 + j, l, r.host + j * this.cs, true);
    r.e.dirty = true;
    this.a.cache.pointsAtData(r.e, written);
  }

  /** The slow path: clusters taken, then plan (locked), data (unlocked), commit (locked). */
  async write(offset: number, buf: Buffer, zeroMode: ZeroMode): Promise<void> {
    const first = Math.floor(offset / this.cs);
    const last = Math.floor((offset + buf.length - 1) / this.cs);
    const lease = this.clusters.acquire(first, last + 1, false);
    try {
      if (lease.ready) await lease.ready;
      const p = await this.a.locked(() => this.plan(offset, buf, zeroMode));
      try {
        // Wait for every piece even when one fails, so no stray write lands after the clusters are released.
        const results = await Promise.allSettled(p.io.map((f) => f()));
        const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
        if (failed) throw failed.reason;
        await this.a.locked(async () => {
          for (const c of p.commits) c();
          for (const e of p.pinned) this.a.cache.unpin(e);
          p.pinned.length = 0;
          await this.a.cache.evict();
        });
      } finally {
        // On a failed data write nothing is committed: the new clusters leak, nothing points at garbage.
        for (const e of p.pinned) this.a.cache.unpin(e);
      }
    } finally {
      lease.release();
    }
  }

  /** Resolves once every write and discard that has clusters in flight now has ended (close). */
  drain(): Promise<void> {
    return this.clusters.run(0, EVERYTHING, false, async () => undefined);
  }

  /**
   * Runs `fn` under the image lock once no write has clusters [first, last] in flight, holding
   * them meanwhile (a discard changes their L2 entries without racing a write's plan and commit).
   */
  exclusive<T>(first: number, last: number, fn: () => Promise<T>): Promise<T> {
    return this.clusters.run(first, last + 1, false, () => this.a.locked(fn));
  }

  /** Step 1, under the lock. Zero clusters are set here (nothing to write for them). */
  private async plan(offset: number, buf: Buffer, zeroMode: ZeroMode): Promise<Plan> {
    const { ctx, cache } = this.a;
    const cs = this.cs;
    const n = ctx.l2Entries;
    const end = offset + buf.length;
    const firstC = Math.floor(offset / cs);
    const lastC = Math.floor((end - 1) / cs);
    const allZero = zeroMode === 'all' || (zeroMode === 'unallocated' && isAllZero(buf));
    const plan: Plan = { pinned: [], io: [], commits: [] };
    const views = new Map<number, CacheEntry | undefined>();
    const priv = new Set<number>();
    const makePrivate = async (c: number): Promise<void> => {
      const l1i = Math.floor(c / n);
      if (priv.has(l1i)) return;
      const e = await this.a.privateL2(l1i);
      plan.pinned.push(e);
      views.set(l1i, e);
      priv.add(l1i);
    };
    try {
      for (let l1i = Math.floor(firstC / n); l1i <= Math.floor(lastC / n); l1i++) {
        const off = this.a.l2Offset(l1i);
        const e = off ? await cache.get('l2', off) : undefined;
        if (e) plan.pinned.push(e);
        views.set(l1i, e);
      }
      const entryOf: EntryOf = (c) => [views.get(Math.floor(c / n))!, c % n];
      const direct = (c: number): number => {
        const l1i = Math.floor(c / n);
        const e = views.get(l1i);
        // A table shared with a snapshot (L1 entry without COPIED) is never written in place.
        return e && l1Copied(ctx.l1, l1i) ? this.directHost(e.buf, c % n) : -1;
      };
      const fullyCovered = (c: number): boolean => offset <= c * cs && end >= Math.min((c + 1) * cs, this.a.virtualSize);
      // 'skip': already reads as zeros; 'zero': becomes a zero cluster; 'write': data goes out.
      const zeroAction = (c: number): 'skip' | 'zero' | 'write' => {
        if (!allZero || !fullyCovered(c)) return 'write';
        if (this.readsAsZeros(c * cs, cs)) return 'skip';
        if (this.a.zeroClusters && (zeroMode === 'all' || direct(c) < 0)) return 'zero';
        return 'write';
      };
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
          const at = host + (from - Math.floor(from / cs) * cs);
          const data = buf.subarray(from - offset, to - offset);
          plan.io.push(() => this.a.dataFile.write(data, at, 'data'));
          this.a.counters.dataWrites++;
          continue;
        }
        if (privateHost(this.a, c, entryOf) >= 0) {
          // A private host cluster not fully writable in place (extended L2 with subclusters
          // unallocated, or a zero cluster that kept its host cluster): reuse it.
          await makePrivate(c);
          if (ctx.layout.extended) planSubclusters(this.a, plan, c, offset, buf, entryOf);
          else planZeroAllocated(this.a, plan, c, offset, buf, entryOf);
          c++;
          continue;
        }
        let k = 1;
        while (c + k <= lastC && direct(c + k) < 0 && zeroAction(c + k) === 'write' && privateHost(this.a, c + k, entryOf) < 0) k++;
        for (let j = 0; j < k; j++) await makePrivate(c + j);
        await this.planRun(plan, c, k, offset, buf, entryOf);
        c += k;
      }
      return plan;
    } catch (e) {
      for (const x of plan.pinned) cache.unpin(x);
      throw e;
    }
  }

  /** New contiguous host clusters for guest clusters [c0, c0+k). */
  private async planRun(plan: Plan, c0: number, k: number, offset: number, buf: Buffer, entryOf: EntryOf): Promise<void> {
    const cs = this.cs;
    const l = this.a.ctx.layout;
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
    // New clusters lie past everything ever written (append-only allocation) and read as
    // zeros: COW regions that read as zeros anyway are not written.
    const headLen = offset > writeStart && !this.readsAsZeros(writeStart, offset - writeStart) ? offset - writeStart : 0;
    const skipHead = offset > writeStart && headLen === 0 ? offset - writeStart : 0;
    const tailLen = end < writeEnd && !this.readsAsZeros(end, writeEnd - end) ? writeEnd - end : 0;
    const host = await this.a.refcounts.allocate(k);
    this.a.counters.allocatedClusters += k;
    for (let j = 0; j < k; j++) await this.a.cache.dependOn(entryOf(c0 + j)[0], 'refblock');
    const payload = buf.subarray(Math.max(offset, runStart) - offset, Math.min(end, runEnd) - offset);
    let written: DataWrite | undefined;
    plan.io.push(async () => {
      const parts: Buffer[] = [];
      if (headLen) {
        const head = Buffer.alloc(headLen);
        await this.a.readLayer(writeStart, head);
        parts.push(head);
      }
      parts.push(payload);
      if (tailLen) {
        const tail = Buffer.alloc(tailLen);
        await this.a.readLayer(end, tail);
        parts.push(tail);
      }
      written = await trackData(this.a.cache, this.a.dataFile.write(parts, host + (writeStart - runStart) + skipHead, 'data'));
    });
    this.a.counters.dataWrites++;
    plan.commits.push(() => {
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
        this.a.cache.pointsAtData(e, written!);
      }
    });
  }

  /** True when this layer's range reads as zeros without any I/O. */
  readsAsZeros(offset: number, length: number): boolean {
    const pieces = mapSync(this.a.ctx, offset, length);
    return !!pieces && pieces.every((p) => p.kind === KIND_ZERO || (p.kind === KIND_UNALLOCATED && !this.a.hasBacking));
  }

  /**
   * Makes a cluster read as zeros. With `keepHost` (a private cluster being zeroed) the host
   * cluster stays allocated, so a later write reuses it instead of allocating (QEMU's
   * preallocated zero cluster); otherwise the old reference is dropped.
   */
  private setZero(e: CacheEntry, i: number, keepHost: boolean): void {
    const l = this.a.ctx.layout;
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
  dropReference(t: Buffer, i: number): void {
    const l = this.a.ctx.layout;
    const kind = l2Kind(t, i, l);
    if (kind === KIND_COMPRESSED) {
      const c = l2Compressed(t, i, l);
      this.a.refcounts.free(c.host, c.size);
    } else if (kind !== KIND_UNALLOCATED) {
      const host = l2HostOffset(t, i, l);
      if (host) this.a.refcounts.free(host, this.cs);
    }
  }
}
