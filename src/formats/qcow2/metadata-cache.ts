/**
 * The metadata cache (seed 2): L2 tables and refcount blocks, kept as the raw big-endian bytes
 * of their cluster and decoded on access, in one LRU bounded by bytes. Entries are pinned while
 * a request uses them. Dirty entries are written back on flush or on eviction through the
 * backend, which owns the ordering rule (refcount blocks durable before an L2 table that needs
 * them). Eviction happens only in `evict()`, which the image calls between requests, so no
 * write-back ever runs in the middle of a metadata update.
 */
export type TableKind = 'l2' | 'refblock';

export interface CacheEntry {
  readonly kind: TableKind;
  readonly offset: number; // host offset of the table's cluster
  readonly buf: Buffer;
  dirty: boolean;
  pins: number;
}

export interface CacheBackend {
  load(kind: TableKind, offset: number, into: Buffer): Promise<void>;
  /** Writes dirty entries of one kind (sorted by offset); the backend enforces dependencies. */
  writeBack(kind: TableKind, entries: CacheEntry[]): Promise<void>;
}

export class MetadataCache {
  private readonly entries = new Map<number, CacheEntry>(); // insertion order = LRU order
  hits = 0;
  misses = 0;

  constructor(readonly capacityBytes: number, readonly tableSize: number, private readonly backend: CacheBackend) {}

  /** Synchronous lookup for the lock-free fast paths; touches LRU order. */
  peek(offset: number): Buffer | undefined {
    const e = this.entries.get(offset);
    if (!e) return undefined;
    this.touch(e);
    this.hits++;
    return e.buf;
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
        e = { kind, offset, buf, dirty: false, pins: 0 };
        this.entries.set(offset, e);
      }
    }
    e.pins++;
    return e;
  }

  /** A table for a freshly allocated cluster: `init` bytes (or zeros), dirty, pinned. */
  create(kind: TableKind, offset: number, init?: Buffer): CacheEntry {
    const buf = Buffer.alloc(this.tableSize);
    if (init) init.copy(buf);
    const e: CacheEntry = { kind, offset, buf, dirty: true, pins: 1 };
    this.entries.delete(offset);
    this.entries.set(offset, e);
    return e;
  }

  unpin(e: CacheEntry): void {
    e.pins--;
  }

  dirty(kind: TableKind): CacheEntry[] {
    const out: CacheEntry[] = [];
    for (const e of this.entries.values()) if (e.dirty && e.kind === kind) out.push(e);
    return out.sort((a, b) => a.offset - b.offset);
  }

  hasDirty(kind: TableKind): boolean {
    for (const e of this.entries.values()) if (e.dirty && e.kind === kind) return true;
    return false;
  }

  get bytes(): number {
    return this.entries.size * this.tableSize;
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
    // Refcount blocks first: the backend would write them anyway before any L2 table.
    for (const kind of ['refblock', 'l2'] as const) {
      const dirty = victims.filter((e) => e.kind === kind && e.dirty).sort((a, b) => a.offset - b.offset);
      if (dirty.length) await this.backend.writeBack(kind, dirty);
    }
    for (const e of victims) if (e.pins === 0 && !e.dirty) this.entries.delete(e.offset);
  }

  /** Forget everything (after a refcount rebuild replaced the structures on disk). */
  clear(): void {
    this.entries.clear();
  }

  private touch(e: CacheEntry): void {
    this.entries.delete(e.offset);
    this.entries.set(e.offset, e);
  }
}
