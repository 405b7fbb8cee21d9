/**
 * The metadata cache (seed 2): L2 tables and refcount blocks, kept as the raw big-endian bytes
 * of their cluster and decoded on access, in one LRU bounded by bytes. Entries are pinned while
 * a request uses them. Dirty entries are written back on flush or on eviction; eviction happens
 * only in `evict()`, which the image calls between requests, so no write-back ever runs in the
 * middle of a metadata update.
 *
 * THE WRITE ORDER lives here, and only here. What reaches the disk before a crash is anything
 * written since the last completed barrier (host datasync), in any order; so whatever must land
 * before something else is separated from it by a barrier:
 *   1. data → L2: an L2 entry pointing at newly written data (`pointsAtData`) is written only
 *      after that data write completed and a barrier that started after it completed.
 *   2. refcounts → L2: an L2 table referencing newly allocated clusters (`dependOn(l2, 'refblock')`)
 *      is written only after the refcount side (dirty refcount blocks, then the refcount table)
 *      is written and a barrier passed. Lazy refcounts replace this barrier, and only this one, by
 *      the image's dirty bit being set durably (stale refcounts are then rebuilt on open).
 *   3. L2 → L1 (a side's roots): the tables a side's roots point at (L1 → L2 tables, refcount
 *      table → refcount blocks) are written and a barrier passed before the roots are written.
 *   4. frees, the other way: a refcount decrement (`dependOn(refblock, 'l2')`) is written only
 *      after the dropped references (L2 tables and L1) are durable. Leak rather than corrupt.
 * The two directions of 2 and 4 never wait on each other at once: declaring one first settles
 * the other (as QEMU's qcow2_cache_set_dependency does). Inside a root, moving it follows the same
 * rule one level up: the new table durable before the header points at it (refcounts.ts, resize).
 * Everything else only declares what depends on what; this file decides when to write and sync.
 */
import { VdiskError } from '../../io/errors';

const DONE: Promise<void> = Promise.resolve();

export type TableKind = 'l2' | 'refblock';

export interface CacheEntry {
  readonly kind: TableKind;
  readonly offset: number; // host offset of the table's cluster
  readonly buf: Buffer;
  dirty: boolean;
  pins: number;
  /** Rule 1: a barrier must start after this clock time (data this entry points at completed by then). */
  dataAt: number;
  /** Rule 1: data writes still in flight that this entry points at. */
  pendingData?: DataWrite[];
  /** Rules 2 and 4: changes made to these sides before the given clock time must be durable first. */
  after?: Partial<Record<TableKind, number>>;
}

/** A data write an L2 entry may point at: completedAt is the cache clock when it finished. */
export interface DataWrite {
  completedAt: number; // Infinity while in flight or when it failed
  readonly done: Promise<void>; // never rejects
}

/** What the owner of a kind adds: the roots that point at its tables, and lazy refcounts. */
export interface TableSide {
  /** Roots (L1 table for L2 tables; refcount table for refcount blocks) with unwritten changes. */
  rootsDirty(): boolean;
  /** Writes the roots; called once the side's tables are durable (rule 3). */
  writeRoots(): Promise<void>;
  /** Lazy refcounts: what depends on this side waits for `lazyBarrier()` instead of the side. */
  readonly lazy: boolean;
  lazyBarrier(): Promise<void>;
}

export interface CacheBackend {
  load(kind: TableKind, offset: number, into: Buffer): Promise<void>;
  /** Writes one run of adjacent tables of one kind at `offset`; ordering is the cache's job. */
  write(kind: TableKind, offset: number, bufs: Buffer[]): Promise<void>;
  /** A barrier: every host write completed before it started is durable when it returns. */
  sync(): Promise<void>;
}

interface SideState {
  side?: TableSide;
  lastWrite: number; // clock after the side's latest table or root write completed
  writtenFrom: number; // start of the latest complete write of the whole side
  writtenEnd: number; // and its end
  writing: boolean;
}

export class MetadataCache {
  private readonly entries = new Map<number, CacheEntry>(); // insertion order = LRU order
  /** The entry last put at the end of `entries` (most recently used): touching it again changes nothing. */
  private mru: CacheEntry | undefined;
  hits = 0;
  misses = 0;
  /** Logical clock: orders data completions, table writes and barriers. */
  private clock = 0;
  /** Start time of the latest completed barrier: writes completed before it are durable. */
  private syncedFrom = -1;
  private readonly sides: Record<TableKind, SideState> = {
    l2: { lastWrite: -1, writtenFrom: -1, writtenEnd: -1, writing: false },
    refblock: { lastWrite: -1, writtenFrom: -1, writtenEnd: -1, writing: false },
  };

  constructor(
    readonly capacityBytes: number,
    readonly tableSize: number,
    private readonly backend: CacheBackend,
  ) {}

  /** Registers the owner of a kind (its roots, lazy refcounts). */
  setSide(kind: TableKind, side: TableSide): void {
    this.sides[kind].side = side;
  }

  /** Synchronous lookup for the lock-free fast paths; touches LRU order. */
  peek(offset: number): Buffer | undefined {
    return this.peekEntry(offset)?.buf;
  }

  /** peek(), the entry itself (not pinned): for a change made without waiting (WritePath.tryAllocateSync). */
  peekEntry(offset: number): CacheEntry | undefined {
    const e = this.entries.get(offset);
    if (!e) return undefined;
    this.touch(e);
    this.hits++;
    return e;
  }

  /** The table at `offset`, loaded if needed, pinned: call unpin() when done. */
  async get(kind: TableKind, offset: number): Promise<CacheEntry> {
    let e = this.entries.get(offset);
    if (e) {
      this.hits++;
      this.touch(e);
    } else {
      this.misses++;
      const buf = Buffer.allocUnsafe(this.tableSize);
      await this.backend.load(kind, offset, buf);
      // Another load of the same table may have finished meanwhile (only under the image lock
      // in practice, but stay correct): keep the first one.
      e = this.entries.get(offset);
      if (!e) {
        e = { kind, offset, buf, dirty: false, pins: 0, dataAt: -1 };
        this.entries.set(offset, e);
        this.mru = e;
      }
    }
    e.pins++;
    return e;
  }

  /**
   * The table at `offset` into `into` without caching it (a map of a whole disk reads thousands
   * once each): the cached copy when there is one (it may be dirty), else the file's.
   */
  async readUncached(kind: TableKind, offset: number, into: Buffer): Promise<void> {
    const e = this.entries.get(offset);
    if (e) e.buf.copy(into);
    else await this.backend.load(kind, offset, into);
  }

  /**
   * Adjacent tables [offset, offset + into.length) in one host read, none of them cached: each
   * table the cache holds (it may be dirty) is copied over the file's bytes. A preallocated
   * image's tables sit together, and one read of 16 costs about what one of one does.
   */
  async readRunUncached(kind: TableKind, offset: number, into: Buffer): Promise<void> {
    await this.backend.load(kind, offset, into);
    for (let at = 0; at < into.length; at += this.tableSize) this.entries.get(offset + at)?.buf.copy(into, at);
  }

  /** A table for a freshly allocated cluster: `init` bytes (or zeros), dirty, pinned. */
  create(kind: TableKind, offset: number, init?: Buffer): CacheEntry {
    const buf = Buffer.alloc(this.tableSize);
    if (init) init.copy(buf);
    const e: CacheEntry = { kind, offset, buf, dirty: true, pins: 1, dataAt: -1 };
    this.entries.delete(offset);
    this.entries.set(offset, e);
    this.mru = e;
    return e;
  }

  /** Keeps an entry from eviction (one taken with peekEntry) until unpin(). */
  pin(e: CacheEntry): void {
    e.pins++;
  }

  unpin(e: CacheEntry): void {
    e.pins--;
  }

  dirty(kind: TableKind): CacheEntry[] {
    const out: CacheEntry[] = [];
    for (const e of this.entries.values()) if (e.dirty && e.kind === kind) out.push(e);
    return out.sort((a, b) => a.offset - b.offset);
  }

  get bytes(): number {
    return this.entries.size * this.tableSize;
  }

  // ---- declaring the order ----

  /** Rule 1: registers a data write (started by the caller) that L2 entries may come to point at. */
  trackData(write: Promise<void>): DataWrite {
    const d: { completedAt: number; done: Promise<void> } = { completedAt: Infinity, done: Promise.resolve() };
    d.done = write.then(
      () => void (d.completedAt = this.clock++),
      () => undefined, // the caller sees the failure; nothing may point at it
    );
    return d;
  }

  /** Rule 1: a data write that already completed (a synchronous one), for pointsAtData. */
  dataWritten(): DataWrite {
    return { completedAt: this.clock++, done: DONE };
  }

  /** Rule 1: `e` (dirty) now points at what `d` wrote. */
  pointsAtData(e: CacheEntry, d: DataWrite): void {
    if (d.completedAt === Infinity) (e.pendingData ??= []).push(d);
    else if (d.completedAt >= this.syncedFrom) e.dataAt = Math.max(e.dataAt, d.completedAt);
  }

  /**
   * Rules 2 and 4: `e` is about to reference what `side` changed so far (allocation: an L2 table
   * after the refcount increments), or to undo what it references (free: a refcount block, called
   * before the decrement). Never both directions at once: the opposite one is settled first.
   */
  async dependOn(e: CacheEntry, side: TableKind): Promise<void> {
    const need = this.dependency(e, side);
    if (need === 'none') return;
    if (need === 'settle') {
      await this.writeSide(e.kind);
      await this.syncAfter(this.sides[e.kind].writtenEnd);
    }
    this.declare(e, side);
  }

  /**
   * Whether dependOnSync(e, side) can declare without I/O: no table of `side` waits for `e`'s
   * kind (the opposite direction, which dependOn would settle first). Clean tables count too, so
   * the answer holds after a change that only marks tables of `side` dirty (a refcount increment).
   */
  canDependOnSync(e: CacheEntry, side: TableKind): boolean {
    for (const x of this.entries.values()) if (x.kind === side && x.after?.[e.kind] !== undefined) return false;
    return true;
  }

  /** dependOn() without waiting, where canDependOnSync(e, side) said it can (else throws: a caller's bug). */
  dependOnSync(e: CacheEntry, side: TableKind): void {
    const need = this.dependency(e, side);
    if (need === 'settle') throw VdiskError.io(`qcow2 metadata write order: a ${e.kind} table cannot depend on ${side} without I/O`);
    if (need === 'declare') this.declare(e, side);
  }

  /** What dependOn(e, side) has to do: nothing, declare, or settle the opposite direction first. */
  private dependency(e: CacheEntry, side: TableKind): 'none' | 'declare' | 'settle' {
    if (side === e.kind) return 'none';
    const pending = e.after?.[side];
    // Already waiting for this side: no opposite dependency can exist (declaring one settles this one).
    if (pending !== undefined && this.sides[side].writtenFrom <= pending) return 'declare';
    if (this.settled(side)) return 'none';
    return this.anyDirty(side, (x) => x.after?.[e.kind] !== undefined) ? 'settle' : 'declare';
  }

  private declare(e: CacheEntry, side: TableKind): void {
    const at = this.clock++;
    e.after = { ...e.after, [side]: at };
  }

  // ---- writing in that order ----

  /** A barrier, timed on the cache clock. Every host datasync of the image goes through here. */
  async sync(): Promise<void> {
    const start = this.clock++;
    await this.backend.sync();
    this.syncedFrom = Math.max(this.syncedFrom, start);
  }

  /** Writes one side (its tables, then its roots) and makes it durable. */
  async flushSide(kind: TableKind): Promise<void> {
    await this.writeSide(kind);
    await this.syncAfter(this.sides[kind].lastWrite);
  }

  /** Writes every dirty table and root, each after what it depends on, then a final barrier. */
  async flush(): Promise<void> {
    await this.writeSide('refblock');
    await this.writeSide('l2');
    await this.sync();
  }

  /** Drops least recently used unpinned entries until within capacity, writing dirty ones back. */
  async evict(): Promise<void> {
    if (this.bytes <= this.capacityBytes) return;
    const victims: CacheEntry[] = [];
    let bytes = this.bytes;
    for (const e of this.entries.values()) {
      if (bytes <= this.capacityBytes) break;
      if (e.pins > 0) continue;
      victims.push(e);
      bytes -= this.tableSize;
    }
    for (const kind of ['refblock', 'l2'] as const) await this.writeEntries(victims.filter((e) => e.kind === kind && e.dirty));
    for (const e of victims) if (e.pins === 0 && !e.dirty) this.entries.delete(e.offset);
  }

  /** Forget everything (after a refcount rebuild replaced the structures on disk). */
  clear(): void {
    this.entries.clear();
  }

  /** True when `kind` has nothing unwritten and nothing written since the last barrier. */
  private settled(kind: TableKind): boolean {
    const s = this.sides[kind];
    return !this.anyDirty(kind, () => true) && !s.side?.rootsDirty() && s.lastWrite <= this.syncedFrom; // equal only when both are -1
  }

  private anyDirty(kind: TableKind, pred: (e: CacheEntry) => boolean): boolean {
    for (const e of this.entries.values()) if (e.dirty && e.kind === kind && pred(e)) return true;
    return false;
  }

  private async syncAfter(t: number): Promise<void> {
    if (t >= 0 && this.syncedFrom <= t) await this.sync();
  }

  /** Rule 3: the side's dirty tables, a barrier, then its roots. */
  private async writeSide(kind: TableKind): Promise<void> {
    const s = this.sides[kind];
    if (s.writing) throw VdiskError.io(`qcow2 metadata write order: ${kind} tables depend on themselves`);
    s.writing = true;
    try {
      const from = this.clock++;
      await this.writeEntries(this.dirty(kind));
      if (s.side?.rootsDirty()) {
        await this.syncAfter(s.lastWrite);
        await s.side.writeRoots();
        s.lastWrite = this.clock++;
      }
      s.writtenFrom = from;
      s.writtenEnd = this.clock++;
    } finally {
      s.writing = false;
    }
  }

  /** Writes entries of one kind once their dependencies are durable; adjacent ones in one write. */
  private async writeEntries(entries: CacheEntry[]): Promise<void> {
    if (!entries.length) return;
    let need = -1;
    for (const e of entries) need = Math.max(need, await this.prepare(e));
    await this.syncAfter(need);
    entries = entries.filter((e) => e.dirty).sort((a, b) => a.offset - b.offset);
    if (!entries.length) return;
    let i = 0;
    while (i < entries.length) {
      let j = i + 1;
      while (j < entries.length && entries[j]!.offset === entries[j - 1]!.offset + this.tableSize) j++;
      const run = entries.slice(i, j);
      const bufs = run.map((e) => Buffer.from(e.buf));
      for (const e of run) {
        e.dirty = false;
        e.dataAt = -1;
        e.after = undefined;
      }
      try {
        await this.backend.write(run[0]!.kind, run[0]!.offset, bufs);
      } catch (err) {
        for (const e of run) e.dirty = true; // still to be written; what it waited for stays durable
        throw err;
      }
      i = j;
    }
    this.sides[entries[0]!.kind].lastWrite = this.clock++;
  }

  /** Writes what `e` depends on; returns the time after which a barrier must start before `e` is written. */
  private async prepare(e: CacheEntry): Promise<number> {
    let need = e.dataAt;
    if (e.pendingData) {
      for (const d of e.pendingData) {
        await d.done;
        need = Math.max(need, d.completedAt === Infinity ? -1 : d.completedAt);
      }
      e.pendingData = undefined;
      e.dataAt = need;
    }
    for (const kind of ['refblock', 'l2'] as const) {
      const at = e.after?.[kind];
      if (at === undefined) continue;
      const s = this.sides[kind];
      if (s.side?.lazy) {
        await s.side.lazyBarrier();
        continue;
      }
      if (s.writtenFrom <= at) await this.writeSide(kind);
      need = Math.max(need, s.writtenEnd);
    }
    return need;
  }

  private touch(e: CacheEntry): void {
    // Reads that stay in one table (most do) would otherwise rehash it twice each.
    if (e === this.mru) return;
    this.entries.delete(e.offset);
    this.entries.set(e.offset, e);
    this.mru = e;
  }
}
