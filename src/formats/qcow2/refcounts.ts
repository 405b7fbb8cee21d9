/**
 * Host cluster accounting: the refcount table (kept whole in memory) and refcount blocks (in the
 * metadata cache). New clusters are contiguous for a whole request: a run of clusters freed in
 * this session (discard) when one is big enough, else at the end of the image. A freed run
 * becomes reusable only when the image hands it back (`addReusable`): after its host range was
 * punched (so it reads as zeros, like the end of the file) and no lock-free I/O that looked up
 * the old mapping is still in flight.
 *
 * Ordering: the refcount side of the metadata cache's write order (metadata-cache.ts). This file
 * writes the refcount table (the side's root) when the cache asks, and declares that a decrement
 * waits for the dropped references. Frees are queued and applied after a flush, so by then the
 * references are already durable and the decrement waits for nothing.
 */
import createDebug from 'debug';
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { Header, INCOMPAT_DIRTY, incompatiblePatch, MAX_REFTABLE_BYTES, refcountTablePatch } from './header';
import type { CacheEntry, MetadataCache, TableSide } from './metadata-cache';
import { getRefcount, maxRefcount, reftableEntry, setRefcount, setReftableEntry } from './refcount-block';

const log = createDebug('vdiskfs:qcow2');

export interface RefcountCounters {
  metadataWrites: number;
  hostFlushes: number;
}

export class Refcounts implements TableSide {
  readonly clusterSize: number;
  readonly perBlock: number; // refcounts per block
  /** Next host cluster index to allocate (end of the image). */
  nextFree: number;
  private dirtyLo = Infinity; // dirty reftable entry range (in-place updates)
  private dirtyHi = -1;
  private relocated: { oldOffset: number; oldClusters: number } | undefined;
  private pendingFrees: { host: number; length: number }[] = [];
  /**
   * Before the image first grows, clusters an earlier session or QEMU left free below its end are
   * punched and reused, as QEMU's allocator reuses them (once, and only while this session has
   * freed nothing itself: its own frees wait in recycle's quarantine).
   */
  reclaimOnGrow = false;
  private freesApplied = false;
  /** Runs of clusters (index, count) with refcount 0, punched, ready for reuse; sorted, disjoint. */
  private reusable: { first: number; count: number }[] = [];
  /**
   * Lazy refcounts (compatible bit 0): the image carries the dirty bit while refcounts on disk
   * may be stale, so L2 tables need not wait for the refcount blocks (they still wait for their
   * data); a crash leaves a dirty image whose refcounts are rebuilt on the next writable open.
   */
  lazyRefcounts: { header: Header; marked: boolean } | undefined;

  constructor(
    private readonly file: HostFile,
    private readonly cache: MetadataCache,
    readonly clusterBits: number,
    readonly order: number,
    public table: Buffer,
    public tableOffset: number,
    nextFree: number,
    private readonly counters: RefcountCounters,
  ) {
    this.clusterSize = 2 ** clusterBits;
    this.perBlock = (this.clusterSize * 8) >> order;
    this.nextFree = nextFree;
    cache.setSide('refblock', this);
  }

  get tableEntries(): number {
    return this.table.length / 8;
  }

  blockOffset(blockIndex: number): number {
    if (blockIndex >= this.tableEntries) return 0;
    const off = reftableEntry(this.table, blockIndex);
    if (off % this.clusterSize !== 0) throw VdiskError.corrupt(`qcow2 refcount block ${blockIndex} not cluster aligned`);
    return off;
  }

  async get(cluster: number): Promise<number> {
    const b = this.blockOffset(Math.floor(cluster / this.perBlock));
    if (b === 0) return 0;
    const e = await this.cache.get('refblock', b);
    try {
      return getRefcount(e.buf, cluster % this.perBlock, this.order);
    } finally {
      this.cache.unpin(e);
    }
  }

  /** Adds `delta` to the refcount of clusters [first, first+count); blocks must exist. */
  async change(first: number, count: number, delta: number, onZero?: (cluster: number) => void): Promise<void> {
    let c = first;
    const end = first + count;
    while (c < end) {
      const bi = Math.floor(c / this.perBlock);
      const b = this.blockOffset(bi);
      if (b === 0) throw VdiskError.corrupt(`qcow2 no refcount block for cluster ${c}`);
      const e = await this.cache.get('refblock', b);
      try {
        if (delta < 0) await this.cache.dependOn(e, 'l2'); // a decrement waits for the dropped references
        c = this.changeInBlock(e, c, Math.min(end, (bi + 1) * this.perBlock), delta, onZero);
      } finally {
        this.cache.unpin(e);
      }
    }
  }

  /** Adds `delta` to the counts of clusters [c, stop), all in block `e`; returns `stop`. */
  private changeInBlock(e: CacheEntry, c: number, stop: number, delta: number, onZero?: (cluster: number) => void): number {
    for (; c < stop; c++) {
      const i = c % this.perBlock;
      const old = getRefcount(e.buf, i, this.order);
      let v = old + delta;
      if (v < 0) {
        // Only a free can get here, on an image whose refcounts were already wrong: a leak
        // is harmless, a failed flush is not.
        log('refcount of cluster %d already 0 on free; left at 0', c);
        v = 0;
      }
      if (v > maxRefcount(this.order)) throw VdiskError.noSpace(`qcow2 refcount of cluster ${c} overflows ${1 << this.order} bits`);
      setRefcount(e.buf, i, this.order, v);
      if (v === 0 && old > 0) onZero?.(c); // never reuse a cluster whose count was already wrong
    }
    e.dirty = true;
    return stop;
  }

  /** Allocates `count` contiguous clusters (a reusable run, else at the end); returns the host offset. */
  async allocate(count: number): Promise<number> {
    let reused = this.takeReusable(count);
    if (reused < 0 && this.reclaimOnGrow) {
      this.reclaimOnGrow = false;
      if (!this.freesApplied) await this.reclaimFreeBelowEnd();
      reused = this.takeReusable(count);
    }
    if (reused >= 0) {
      await this.change(reused, count, 1);
      return reused * this.clusterSize;
    }
    for (;;) {
      const start = this.nextFree;
      const lastBlock = Math.floor((start + count) / this.perBlock) + 1;
      if (lastBlock >= this.tableEntries) {
        await this.growTable(lastBlock + 1);
        continue;
      }
      const missing = this.firstMissingBlock(start, count);
      if (missing < 0) break;
      // Place a refcount block at the end; the run moves past it.
      await this.installBlock(missing);
    }
    const start = this.nextFree;
    try {
      await this.change(start, count, 1);
    } finally {
      // Also after a count that failed part way: the clusters it counted are leaked (refcount 1,
      // nothing points at them), never counted a second time by the next allocation.
      this.nextFree = start + count;
    }
    return start * this.clusterSize;
  }

  /**
   * allocate() without waiting (WritePath.tryAllocateSync): the host offset of `count` new
   * contiguous clusters, or -1 with nothing changed when it would need I/O (a refcount block not
   * cached or not yet placed, the table to grow, the once-per-session reclaim still to do).
   */
  allocateSync(count: number): number {
    const at = this.reusableAt(count);
    if (at < 0 && this.reclaimOnGrow) return -1;
    const start = at >= 0 ? this.reusable[at]!.first : this.nextFree;
    if (Math.floor((start + count) / this.perBlock) + 1 >= this.tableEntries || this.firstMissingBlock(start, count) >= 0) return -1;
    const blocks: CacheEntry[] = [];
    for (let bi = Math.floor(start / this.perBlock); bi <= Math.floor((start + count - 1) / this.perBlock); bi++) {
      const e = this.cache.peekEntry(this.blockOffset(bi));
      if (!e) return -1;
      blocks.push(e);
    }
    // Nothing can fail past here but a count overflowing, which an increment from 0 never does.
    if (at >= 0) this.takeReusable(count);
    else this.nextFree = start + count;
    let c = start;
    for (const e of blocks) c = this.changeInBlock(e, c, Math.min(start + count, (Math.floor(c / this.perBlock) + 1) * this.perBlock), 1);
    return start * this.clusterSize;
  }

  /** Queues a free; applied by applyFrees() once the reference is durably gone. */
  free(host: number, length: number): void {
    if (length > 0) this.pendingFrees.push({ host, length });
  }

  get hasPendingFrees(): boolean {
    return this.pendingFrees.length > 0;
  }

  get pendingFreeBytes(): number {
    let n = 0;
    for (const f of this.pendingFrees) n += f.length;
    return n;
  }

  /** Applies queued frees; returns the runs of clusters whose refcount reached 0 (host offset, bytes). */
  async applyFrees(): Promise<{ host: number; length: number }[]> {
    const frees = this.pendingFrees;
    this.pendingFrees = [];
    this.freesApplied = true;
    const zeroed: { host: number; length: number }[] = [];
    for (const f of frees) {
      const first = Math.floor(f.host / this.clusterSize);
      const last = Math.floor((f.host + f.length - 1) / this.clusterSize);
      await this.change(first, last - first + 1, -1, (c) => {
        const prev = zeroed[zeroed.length - 1];
        if (prev && prev.host + prev.length === c * this.clusterSize) prev.length += this.clusterSize;
        else zeroed.push({ host: c * this.clusterSize, length: this.clusterSize });
      });
    }
    return zeroed;
  }

  /** Clusters [first, first+count), refcount 0 and reading as zeros, may be allocated again. */
  addReusable(first: number, count: number): void {
    if (count <= 0 || first + count > this.nextFree) return;
    const list = this.reusable;
    let i = 0;
    while (i < list.length && list[i]!.first < first) i++;
    list.splice(i, 0, { first, count });
    // Join with neighbours (runs are disjoint: a cluster is freed once).
    for (let k = Math.max(0, i - 1); k + 1 < list.length && k <= i;) {
      const a = list[k]!;
      const b = list[k + 1]!;
      if (a.first + a.count === b.first) {
        a.count += b.count;
        list.splice(k + 1, 1);
      } else k++;
    }
  }

  /**
   * Runs of clusters below the allocation end whose refcount is 0 (freed by an earlier session or
   * by QEMU). Read from the file, so call it before this session changes anything (open).
   */
  async freeRunsBelowEnd(): Promise<{ first: number; count: number }[]> {
    const out: { first: number; count: number }[] = [];
    const buf = Buffer.alloc(this.clusterSize);
    const blocks = Math.ceil(this.nextFree / this.perBlock);
    for (let bi = 0; bi < blocks; bi++) {
      const off = this.blockOffset(bi);
      if (off === 0) continue; // no block: those clusters cannot be counted without placing one
      const block = this.cache.peek(off) ?? (await this.file.read(buf, off, 'refblock'), buf);
      const stop = Math.min(this.perBlock, this.nextFree - bi * this.perBlock);
      for (let i = 0; i < stop; i++) {
        if (getRefcount(block, i, this.order) !== 0) continue;
        const c = bi * this.perBlock + i;
        const last = out[out.length - 1];
        if (last && last.first + last.count === c) last.count++;
        else out.push({ first: c, count: 1 });
      }
    }
    return out;
  }

  private async reclaimFreeBelowEnd(): Promise<void> {
    let n = 0;
    for (const r of await this.freeRunsBelowEnd()) {
      if (!this.file.punchHole(r.first * this.clusterSize, r.count * this.clusterSize, 'discard')) return;
      this.addReusable(r.first, r.count);
      n += r.count;
    }
    if (n) log('%d free clusters below the end of the image reused', n);
  }

  /** Reusable clusters, for stats and tests. */
  get reusableClusters(): number {
    let n = 0;
    for (const r of this.reusable) n += r.count;
    return n;
  }

  /** Index of the first reusable run of at least `count` clusters; -1 when none. */
  private reusableAt(count: number): number {
    const list = this.reusable;
    for (let i = 0; i < list.length; i++) if (list[i]!.count >= count) return i;
    return -1;
  }

  /** First reusable run of at least `count` clusters, taken from its start; -1 when none. */
  private takeReusable(count: number): number {
    const list = this.reusable;
    const i = this.reusableAt(count);
    if (i >= 0) {
      const r = list[i]!;
      const at = r.first;
      r.first += count;
      r.count -= count;
      if (r.count === 0) list.splice(i, 1);
      return at;
    }
    return -1;
  }

  // ---- the refcount side of the cache's write order ----

  get lazy(): boolean {
    return this.lazyRefcounts !== undefined;
  }

  /** Lazy refcounts: the dirty bit, set durably, stands in for durable refcounts. */
  async lazyBarrier(): Promise<void> {
    if (this.lazyRefcounts && !this.lazyRefcounts.marked) await this.setDirtyBit(true);
  }

  rootsDirty(): boolean {
    return this.relocated !== undefined || this.dirtyHi >= 0;
  }

  /** The refcount table (its blocks are durable by now); when it moved, then the header. */
  async writeRoots(): Promise<void> {
    if (this.relocated) {
      const old = this.relocated;
      await this.file.write(this.table, this.tableOffset, 'reftable');
      this.counters.metadataWrites++;
      await this.cache.sync(); // the new table durable before the header points at it
      const hdr = refcountTablePatch(this.tableOffset, this.table.length / this.clusterSize);
      await this.file.write(hdr.bytes, hdr.at, 'header');
      this.counters.metadataWrites++;
      this.relocated = undefined;
      this.dirtyLo = Infinity;
      this.dirtyHi = -1;
      this.free(old.oldOffset, old.oldClusters * this.clusterSize);
    } else if (this.dirtyHi >= 0) {
      const lo = this.dirtyLo * 8;
      const hi = (this.dirtyHi + 1) * 8;
      this.dirtyLo = Infinity;
      this.dirtyHi = -1;
      try {
        await this.file.write(Buffer.from(this.table.subarray(lo, hi)), this.tableOffset + lo, 'reftable');
      } catch (e) {
        // Still dirty: the next flush writes it again instead of taking it for written.
        this.dirtyLo = Math.min(this.dirtyLo, lo / 8);
        this.dirtyHi = Math.max(this.dirtyHi, hi / 8 - 1);
        throw e;
      }
      this.counters.metadataWrites++;
    }
  }

  /** Lazy refcounts: sets (before the first refcount write) or clears (on a clean close) the dirty bit, durably. */
  async setDirtyBit(dirty: boolean): Promise<void> {
    const l = this.lazyRefcounts!;
    l.header.incompatible = dirty ? l.header.incompatible | INCOMPAT_DIRTY : l.header.incompatible & ~INCOMPAT_DIRTY;
    const b = incompatiblePatch(l.header.incompatible);
    if (!dirty) await this.cache.sync(); // everything else durable before the image says "clean"
    await this.file.write(b.bytes, b.at, 'header');
    this.counters.metadataWrites++;
    await this.cache.sync();
    l.marked = dirty;
    log('dirty bit %s', dirty ? 'set' : 'cleared');
  }

  private markTableDirty(i: number): void {
    this.dirtyLo = Math.min(this.dirtyLo, i);
    this.dirtyHi = Math.max(this.dirtyHi, i);
  }

  private firstMissingBlock(start: number, count: number): number {
    const first = Math.floor(start / this.perBlock);
    const last = Math.floor((start + count - 1) / this.perBlock);
    for (let b = first; b <= last; b++) if (this.blockOffset(b) === 0) return b;
    return -1;
  }

  /**
   * Puts a new refcount block for block index `missing` at the end of the image. If the block
   * that would count the new block's own cluster is missing too, the new block covers itself.
   */
  private async installBlock(missing: number): Promise<void> {
    const rb = this.nextFree++;
    const own = Math.floor(rb / this.perBlock);
    if (own >= this.tableEntries) throw VdiskError.noSpace('qcow2 refcount table full');
    const target = this.blockOffset(own) === 0 ? own : missing;
    const e = this.cache.create('refblock', rb * this.clusterSize);
    this.cache.unpin(e);
    setReftableEntry(this.table, target, rb * this.clusterSize);
    if (!this.relocated) this.markTableDirty(target);
    try {
      await this.change(rb, 1, 1);
    } catch (err) {
      // The block's own count failed (loading the block that counts it): the table must not
      // point at a cluster of refcount 0. Cluster rb stays unused (nextFree is past it).
      setReftableEntry(this.table, target, 0);
      throw err;
    }
    log('new refcount block %d at cluster %d', target, rb);
  }

  /** Moves the refcount table to a bigger one at the end of the image (written by writeRoots). */
  private async growTable(minEntries: number): Promise<void> {
    const bytes = Math.ceil((minEntries * 8 * 2) / this.clusterSize) * this.clusterSize;
    if (bytes > MAX_REFTABLE_BYTES) throw VdiskError.noSpace('qcow2 refcount table would exceed its size limit');
    const clusters = bytes / this.clusterSize;
    const old = this.relocated ?? { oldOffset: this.tableOffset, oldClusters: this.table.length / this.clusterSize };
    const before = { table: this.table, tableOffset: this.tableOffset, relocated: this.relocated };
    const table = Buffer.alloc(bytes);
    this.table.copy(table);
    const start = this.nextFree;
    this.nextFree += clusters;
    this.table = table;
    this.tableOffset = start * this.clusterSize;
    this.relocated = old;
    try {
      // Count the new table's clusters (placing refcount blocks for them as needed).
      for (;;) {
        const missing = this.firstMissingBlock(start, clusters);
        if (missing < 0) break;
        await this.installBlock(missing);
      }
      await this.change(start, clusters, 1);
    } catch (err) {
      // Not counted: the table in use stays the one before, which the next flush writes. What
      // was counted for the new one is leaked (refcount 1, nothing points at it), never lost.
      this.table = before.table;
      this.tableOffset = before.tableOffset;
      this.relocated = before.relocated;
      throw err;
    }
    // A table that grew twice before being written: the intermediate one is dropped.
    if (before.relocated) this.free(before.tableOffset, before.table.length);
    log('refcount table moved to %d (%d clusters)', this.tableOffset, clusters);
  }
}
