/**
 * Grain tables kept in memory as their on-disk bytes (little-endian u32 entries, decoded on
 * access) so a write-back writes the buffer unchanged. Clean tables are evicted LRU past the
 * byte budget; dirty ones stay until flush writes them.
 */
export interface CachedTable {
  buf: Buffer;
  /** Bumped on every entry change; a write-back that saw an older version leaves the table dirty. */
  version: number;
  writtenVersion: number;
}

export class GrainTableCache {
  private readonly tables = new Map<number, CachedTable>();
  private readonly loading = new Map<number, Promise<CachedTable>>();
  private bytes = 0;
  /** Tables a request relies on across an await: never evicted while pinned. */
  private readonly pins = new Map<number, number>();
  hits = 0;
  misses = 0;

  constructor(
    private readonly loader: (gtIndex: number) => Promise<Buffer>,
    private readonly maxBytes: number,
  ) {}

  /** The table if cached (no I/O), refreshed in the LRU order. */
  peek(gtIndex: number): CachedTable | undefined {
    const t = this.tables.get(gtIndex);
    if (t) {
      this.hits++;
      this.tables.delete(gtIndex);
      this.tables.set(gtIndex, t);
    }
    return t;
  }

  pin(gtIndex: number): void {
    this.pins.set(gtIndex, (this.pins.get(gtIndex) ?? 0) + 1);
  }

  unpin(gtIndex: number): void {
    const n = (this.pins.get(gtIndex) ?? 1) - 1;
    if (n <= 0) this.pins.delete(gtIndex);
    else this.pins.set(gtIndex, n);
  }

  has(gtIndex: number): boolean {
    return this.tables.has(gtIndex);
  }

  async get(gtIndex: number): Promise<CachedTable> {
    const t = this.peek(gtIndex);
    if (t) return t;
    let p = this.loading.get(gtIndex);
    if (!p) {
      this.misses++;
      p = this.loader(gtIndex).then((buf) => this.insert(gtIndex, buf, false));
      p.finally(() => this.loading.delete(gtIndex)).catch(() => {});
      this.loading.set(gtIndex, p);
    }
    return p;
  }

  /** Puts a table in (a freshly allocated one is dirty: it exists only here). */
  insert(gtIndex: number, buf: Buffer, dirty: boolean): CachedTable {
    const existing = this.tables.get(gtIndex);
    if (existing) return existing;
    const t: CachedTable = { buf, version: dirty ? 1 : 0, writtenVersion: 0 };
    this.tables.set(gtIndex, t);
    this.bytes += buf.length;
    this.evict();
    return t;
  }

  dirtyIndexes(): number[] {
    const out: number[] = [];
    for (const [i, t] of this.tables) if (t.version !== t.writtenVersion) out.push(i);
    return out.sort((a, b) => a - b);
  }

  get size(): number {
    return this.tables.size;
  }

  private evict(): void {
    if (this.bytes <= this.maxBytes) return;
    for (const [i, t] of this.tables) {
      if (this.bytes <= this.maxBytes) break;
      if (t.version !== t.writtenVersion || this.pins.has(i)) continue;
      this.tables.delete(i);
      this.bytes -= t.buf.length;
    }
  }

  /** Called after a write-back: drops clean tables again if the budget is exceeded. */
  trim(): void {
    this.evict();
  }
}
