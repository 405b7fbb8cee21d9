import createDebug from 'debug';
import type { HostFile } from '../../io/host-file';
import { VdiskError } from '../../io/errors';
import { OrderedRangeLock } from '../../io/range-lock';
import { alignUp } from '../../io/safe-int';
import type { Access } from './descriptor';
import { CompressedGrains } from './compressed-grain';
import type { CowSource, ExtentMapping, VmdkExtent } from './extent';
import { mapGrains } from './grain-map';
import { GrainTableCache } from './grain-table-cache';
import { checkDirectorySize, readDirectory } from './grain-directory';
import * as hdr from './sparse-header';
import { TableWriteback } from './table-writeback';
import { GTE_ZEROED, SECTOR, type SparseHeader } from './sparse-header';
import * as marker from './stream-marker';
import * as cowd from './cowd-header';
import { type GrainSpace, writeGrains, writeGrainsSync, writeZeroGrains } from './grain-allocator';

const log = createDebug('vdiskfs:vmdk');

export interface SparseOpenOptions {
  access: Access;
  size: number; // guest bytes the descriptor gives this extent
  fileName: string;
  writable: boolean;
  noMultiAlloc: boolean;
  cacheBytes: number;
  warn: (message: string) => void;
}

/**
 * A hosted sparse extent (KDMV): grain directory → grain tables → grains, with the redundant
 * directory kept in step; also the streamOptimized variant (compressed grains with markers).
 * Table bookkeeping lives here, the mapping answer in grain-map.ts (reads: ../data-path.ts via
 * extent-chain.ts); the write path (the seed) is in grain-allocator.ts,
 * compressed grains in compressed-grain.ts, the directory's on-disk form in grain-directory.ts,
 * the write-back of tables, directories and footer in table-writeback.ts.
 */
export class SparseExtent implements VmdkExtent, GrainSpace {
  readonly type = 'SPARSE';
  readonly grainBytes: number;
  readonly gtEntries: number;
  readonly gtBytes: number;
  readonly compressed: boolean;
  readonly hasMarkers: boolean;
  readonly zeroGrainAllowed: boolean;
  readonly gd: Uint32Array;
  readonly rgd: Uint32Array | null;
  readonly cache: GrainTableCache;
  /** Host byte offset where the next grain / table goes (end of the file). */
  nextFree: number;
  /** Grains being allocated or zeroed (grain-allocator.ts): a second writer waits instead of allocating again. */
  readonly grainLock = new OrderedRangeLock();
  /** Tables allocated here and not yet on disk (their GD entries are written after them). */
  readonly newTables = new Set<number>();
  gdDirty = false;
  private readonly grains: CompressedGrains;
  /** Tables, directories and the footer to disk (also where a streamOptimized footer is). */
  private readonly writeback = new TableWriteback(this);
  readonly stats = {
    grainsAllocated: 0,
    dataWrites: 0,
    gtWrites: 0,
    gdWrites: 0,
    cowReads: 0,
    tablesAllocated: 0,
    zeroGrains: 0,
    grainsDecompressed: 0,
  };
  readonly noMultiAlloc: boolean;
  readOnly: boolean;

  private constructor(
    readonly file: HostFile,
    readonly header: SparseHeader,
    readonly access: Access,
    public size: number,
    readonly fileName: string,
    gd: Uint32Array,
    rgd: Uint32Array | null,
    fileSize: number,
    opts: SparseOpenOptions,
  ) {
    this.grainBytes = header.grainSize * SECTOR;
    this.gtEntries = header.numGTEsPerGT;
    this.gtBytes = this.gtEntries * 4;
    this.compressed = (header.flags & hdr.FLAG_COMPRESSED) !== 0;
    this.hasMarkers = (header.flags & hdr.FLAG_MARKERS) !== 0;
    this.zeroGrainAllowed = (header.flags & hdr.FLAG_ZERO_GRAIN) !== 0;
    this.gd = gd;
    this.rgd = rgd;
    this.nextFree = alignUp(fileSize, SECTOR);
    this.noMultiAlloc = opts.noMultiAlloc;
    this.readOnly = !opts.writable || access !== 'RW';
    this.grains = new CompressedGrains({
      file,
      grainBytes: this.grainBytes,
      hasMarkers: this.hasMarkers,
      fileName,
      warn: opts.warn,
      stats: this.stats,
    });
    this.cache = new GrainTableCache((i) => this.loadTable(i), opts.cacheBytes);
  }

  static async open(file: HostFile, opts: SparseOpenOptions): Promise<SparseExtent> {
    const fileSize = await file.size();
    const head = Buffer.alloc(hdr.SIZE);
    await file.read(head, 0, 'header');
    const isCowd = head.toString('latin1', 0, 4) === cowd.MAGIC;
    let h = isCowd ? cowd.asSparseHeader(cowd.parse(head)) : hdr.parse(head);
    let footerAt = -1;
    if (h.version < 1 || h.version > 3)
      throw VdiskError.unsupported(`${opts.fileName}: sparse extent version ${h.version} is not supported`);
    if (h.gdOffset < 0) {
      // streamOptimized written front to back: the real header (with the GD offset) is the footer.
      if (!(h.flags & hdr.FLAG_COMPRESSED))
        throw VdiskError.corrupt(`${opts.fileName}: grain directory at end but grains are not compressed`);
      if (fileSize < 3 * SECTOR + hdr.SIZE) throw VdiskError.corrupt(`${opts.fileName}: invalid footer (file too short)`);
      const tail = Buffer.alloc(3 * SECTOR);
      await file.read(tail, fileSize - 3 * SECTOR, 'header');
      const fm = marker.parseMetaMarker(tail, 0);
      const eos = marker.parseMetaMarker(tail, 2 * SECTOR);
      if (fm.type !== marker.TYPE_FOOTER || eos.type !== marker.TYPE_EOS || tail.readUInt32LE(SECTOR) !== hdr.MAGIC) {
        throw VdiskError.corrupt(`${opts.fileName}: invalid footer`);
      }
      h = hdr.parse(tail, SECTOR);
      if (h.gdOffset < 0) throw VdiskError.corrupt(`${opts.fileName}: footer has no grain directory`);
      footerAt = fileSize - 3 * SECTOR;
    }
    hdr.checkGeometry(h, opts.fileName);
    const grains = Math.ceil(h.capacity / h.grainSize);
    const tables = Math.ceil(grains / h.numGTEsPerGT);
    checkDirectorySize(tables, fileSize, opts.fileName);
    if (opts.size > h.capacity * SECTOR)
      throw VdiskError.corrupt(`${opts.fileName}: descriptor extent size ${opts.size} larger than capacity ${h.capacity * SECTOR}`);
    const gd = await readDirectory(file, h.gdOffset, tables, fileSize, opts.fileName);
    const rgd = h.flags & hdr.FLAG_RGD && h.rgdOffset > 0 ? await readDirectory(file, h.rgdOffset, tables, fileSize, opts.fileName) : null;
    const ext = new SparseExtent(file, h, opts.access, opts.size, opts.fileName, gd, rgd, fileSize, opts);
    if (isCowd && !ext.readOnly) {
      opts.warn(`${opts.fileName}: COWD (vmfsSparse) extent opened read-only: vdiskfs does not write this format`);
      ext.readOnly = true;
    }
    if (h.version === 3 && !ext.compressed && !ext.readOnly) {
      opts.warn(`${opts.fileName}: sparse extent version 3 (ESXi) opened read-only`);
      ext.readOnly = true;
    }
    if (footerAt >= 0) {
      ext.writeback.footerAt = footerAt;
      ext.nextFree = footerAt; // new grains overwrite the old footer; flush writes a new one after them
    }
    log(
      'open sparse %s grain=%d gtes=%d tables=%d flags=%s v%d',
      opts.fileName,
      ext.grainBytes,
      h.numGTEsPerGT,
      tables,
      h.flags.toString(16),
      h.version,
    );
    return ext;
  }

  get tableCount(): number {
    return this.gd.length;
  }

  private async loadTable(gtIndex: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(this.gtBytes); // filled by the read (zeros past the end); small tables come from Node's pool, no malloc each
    await this.file.read(buf, this.gd[gtIndex]! * SECTOR, 'gt');
    return buf;
  }

  /** Makes every existing table of grains [g0, g1) resident; awaits only for tables not yet cached. */
  async loadTables(g0: number, g1: number): Promise<void> {
    const t0 = Math.floor(g0 / this.gtEntries);
    const t1 = Math.floor((g1 - 1) / this.gtEntries);
    let pending: Promise<unknown>[] | undefined;
    for (let t = t0; t <= t1 && t < this.gd.length; t++) {
      if (this.gd[t] === 0 || this.cache.peek(t)) continue;
      (pending ??= []).push(this.cache.get(t));
    }
    if (pending) await Promise.all(pending);
  }

  /** Pins the tables of grains [g0, g1) (present or not yet loaded) for the length of one request. */
  pinTables(g0: number, g1: number): [number, number] {
    const t0 = Math.floor(g0 / this.gtEntries);
    const t1 = Math.min(Math.floor((g1 - 1) / this.gtEntries), this.gd.length - 1);
    for (let t = t0; t <= t1; t++) this.cache.pin(t);
    return [t0, t1];
  }

  unpinTables([t0, t1]: [number, number]): void {
    for (let t = t0; t <= t1; t++) this.cache.unpin(t);
  }

  /** True when every existing table of grains [g0, g1) is in the cache (no I/O needed). */
  tablesResident(g0: number, g1: number): boolean {
    const t1 = Math.floor((g1 - 1) / this.gtEntries);
    for (let t = Math.floor(g0 / this.gtEntries); t <= t1 && t < this.gd.length; t++) {
      if (this.gd[t] !== 0 && !this.cache.has(t)) return false;
    }
    return true;
  }

  /** Raw GT entry of grain `g` (0 when its table does not exist). Tables must be loaded. */
  gte(g: number): number {
    const t = Math.floor(g / this.gtEntries);
    if (t >= this.gd.length || this.gd[t] === 0) return 0;
    const table = this.cache.peek(t);
    if (!table) throw VdiskError.io(`grain table ${t} not resident`);
    return table.buf.readUInt32LE((g % this.gtEntries) * 4);
  }

  isZeroGte(e: number): boolean {
    return e === GTE_ZEROED && this.zeroGrainAllowed;
  }

  /** Sets grain `g`'s entry in the cached table (the table exists: ensureTable ran). */
  setGte(g: number, value: number): void {
    const t = Math.floor(g / this.gtEntries);
    const table = this.cache.peek(t);
    if (!table) throw VdiskError.io(`grain table ${t} not resident`);
    table.buf.writeUInt32LE(value, (g % this.gtEntries) * 4);
    table.version++;
  }

  /** Creates grain table `t` when its GD entry is 0 (in memory; space reserved at the end of the file). */
  ensureTable(t: number): void {
    if (this.gd[t] !== 0) return;
    const tableBytes = alignUp(this.gtBytes, SECTOR);
    const markerBytes = this.hasMarkers ? SECTOR : 0; // a stream keeps its GT marker before the table
    this.gd[t] = (this.reserve(markerBytes + tableBytes) + markerBytes) / SECTOR;
    if (this.rgd) this.rgd[t] = (this.reserve(markerBytes + tableBytes) + markerBytes) / SECTOR;
    this.cache.insert(t, Buffer.alloc(this.gtBytes), true);
    this.newTables.add(t);
    this.gdDirty = true;
    this.stats.tablesAllocated++;
  }

  reserve(bytes: number): number {
    const at = this.nextFree;
    this.nextFree += bytes;
    this.writeback.footerDirty = this.writeback.footerAt >= 0;
    return at;
  }

  /** The mapping of the first bytes of [offset, offset+length), when its grain table is cached (else undefined). */
  mapSync(offset: number, length: number): ExtentMapping | undefined {
    const t = Math.floor(Math.floor(offset / this.grainBytes) / this.gtEntries);
    if (t >= this.gd.length || this.gd[t] === 0) return this.unallocatedTable(t, offset, length);
    const table = this.cache.peek(t);
    return table && mapGrains(this, table.buf, offset, length);
  }

  async map(offset: number, length: number): Promise<ExtentMapping> {
    const t = Math.floor(Math.floor(offset / this.grainBytes) / this.gtEntries);
    if (t >= this.gd.length || this.gd[t] === 0) return this.unallocatedTable(t, offset, length);
    // Use the table object itself: another request's load may evict it from the cache meanwhile.
    return mapGrains(this, (this.cache.peek(t) ?? (await this.cache.get(t))).buf, offset, length);
  }

  async mapForReport(offset: number, length: number): Promise<ExtentMapping> {
    const t = Math.floor(Math.floor(offset / this.grainBytes) / this.gtEntries);
    if (t >= this.gd.length || this.gd[t] === 0) return this.unallocatedTable(t, offset, length);
    const cached = this.cache.peek(t);
    if (cached) return mapGrains(this, cached.buf, offset, length);
    // One scratch table, taken for the read and given back once mapped; a report running beside
    // this one (two lseeks) reads into a buffer of its own.
    const scratch = this.reportScratch ?? Buffer.alloc(this.gtBytes);
    this.reportScratch = undefined;
    try {
      await this.file.read(scratch, this.gd[t]! * SECTOR, 'gt');
      return mapGrains(this, scratch, offset, length);
    } finally {
      this.reportScratch = scratch;
    }
  }

  private reportScratch?: Buffer;

  private unallocatedTable(t: number, offset: number, length: number): ExtentMapping {
    return { kind: 'unallocated', length: Math.min(offset + length, (t + 1) * this.gtEntries * this.grainBytes, this.size) - offset };
  }

  /** The compressed grain at `hostOffset` (grain `grainOffset` of this extent), inflated. */
  inflate(hostOffset: number, grainOffset: number): Promise<Buffer> {
    return this.grains.read(hostOffset, grainOffset);
  }

  write(offset: number, data: Buffer[], length: number, cow: CowSource | null): Promise<void> {
    if (this.readOnly) throw VdiskError.readOnly(`extent ${this.fileName} is read-only`);
    return writeGrains(this, offset, data, length, cow);
  }

  /** write() without waiting: tables cached, grains allocated or new with nothing to copy (grain-allocator.ts writeGrainsSync); false: nothing done. */
  writeSync(offset: number, data: Buffer, hasParent: boolean): boolean {
    if (this.readOnly) throw VdiskError.readOnly(`extent ${this.fileName} is read-only`);
    return writeGrainsSync(this, offset, data, hasParent);
  }

  /** Guest bytes this extent can hold without a new grain table: its grain directory's reach. */
  get room(): number {
    return this.gd.length * this.gtEntries * this.grainBytes;
  }

  /**
   * Grows the extent within its grain directory (the new grains need no new table slots): the
   * header's capacity, written and made durable. The caller updates the descriptor after it.
   */
  async growCapacity(newSize: number): Promise<void> {
    if (this.readOnly || this.compressed || this.writeback.footerAt >= 0) throw VdiskError.readOnly(`extent ${this.fileName} cannot grow`);
    if (newSize % SECTOR !== 0 || newSize > this.room)
      throw VdiskError.noSpace(`extent ${this.fileName} has room for ${this.room} bytes, not ${newSize}`);
    this.header.capacity = newSize / SECTOR;
    await this.file.write(hdr.serialize(this.header), 0, 'header');
    await this.file.datasync('header');
    this.size = newSize;
  }

  writeZeroes(offset: number, length: number, cow: CowSource | null, hasParent: boolean): Promise<void> {
    if (this.readOnly) throw VdiskError.readOnly(`extent ${this.fileName} is read-only`);
    return writeZeroGrains(this, offset, length, cow, hasParent);
  }

  /** Writes grain `g`'s table entry through at once and flushes (QEMU's way: --no-multi-alloc), both copies. */
  writeEntryThrough(g: number): Promise<void> {
    return this.writeback.writeEntryThrough(g);
  }

  /** Write-back of tables, directories and footer (table-writeback.ts). */
  flush(): Promise<void> {
    return this.writeback.flush();
  }

  async close(): Promise<void> {
    await this.file.close();
  }

  counters(): Record<string, number> {
    return { ...this.stats, gtCacheHits: this.cache.hits, gtCacheMisses: this.cache.misses };
  }
}
