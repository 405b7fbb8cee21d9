/**
 * A hosted sparse extent's table write-back (split out of sparse-extent.ts, which keeps the
 * tables in memory and answers mappings): dirty grain tables, the grain directory and its
 * redundant copy, and a streamOptimized footer, written in the spec's order (data durable →
 * grain tables → grain directory → footer), one write-back at a time. Also the write-through of
 * one entry (QEMU's way, --no-multi-alloc).
 */
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { EVERYTHING, OrderedRangeLock } from '../../io/range-lock';
import { allEnded } from '../../io/settle';
import { alignUp } from '../../io/safe-int';
import { encodeDirectory } from './grain-directory';
import type { GrainTableCache } from './grain-table-cache';
import * as hdr from './sparse-header';
import { SECTOR, type SparseHeader } from './sparse-header';
import * as marker from './stream-marker';

/** What the write-back reads and updates of its extent. */
export interface TableSpace {
  readonly file: HostFile;
  readonly header: SparseHeader;
  readonly gtEntries: number;
  readonly gtBytes: number;
  readonly hasMarkers: boolean;
  readonly gd: Uint32Array;
  readonly rgd: Uint32Array | null;
  readonly cache: GrainTableCache;
  /** Tables allocated and not yet on disk (their GD entries are written after them). */
  readonly newTables: Set<number>;
  gdDirty: boolean;
  /** Host byte offset where the next grain / table goes (end of the file). */
  nextFree: number;
  readonly readOnly: boolean;
  readonly stats: { gtWrites: number; gdWrites: number };
}

export class TableWriteback {
  /** streamOptimized with the GD in the footer: where the footer must be rewritten on flush. */
  footerAt = -1;
  footerDirty = false;
  private readonly tableWrites = new OrderedRangeLock(); // flush and write-through, one at a time (see serial)

  constructor(private readonly ext: TableSpace) {}

  /** Writes grain `g`'s table entry through at once and flushes (QEMU's way: --no-multi-alloc), both copies. */
  writeEntryThrough(g: number): Promise<void> {
    return this.serial(() => this.writeEntryNow(g));
  }

  flush(): Promise<void> {
    return this.serial(() => this.flushOnce());
  }

  private async writeEntryNow(g: number): Promise<void> {
    const t = Math.floor(g / this.ext.gtEntries);
    const table = this.ext.cache.peek(t);
    if (!table) throw VdiskError.io(`grain table ${t} not resident`);
    if (this.ext.newTables.has(t)) {
      await this.writeTable(t, table.buf);
      table.writtenVersion = table.version;
      this.ext.newTables.delete(t);
      await this.writeDirectories();
      await this.ext.file.datasync('gt');
      return;
    }
    const at = (g % this.ext.gtEntries) * 4;
    const entry = table.buf.subarray(at, at + 4);
    const writes = [this.ext.file.write(entry, this.ext.gd[t]! * SECTOR + at, 'gt')];
    if (this.ext.rgd && this.ext.rgd[t]) writes.push(this.ext.file.write(entry, this.ext.rgd[t] * SECTOR + at, 'gt'));
    this.ext.stats.gtWrites += writes.length;
    await allEnded(writes);
    // The table stays dirty: only this entry was written, and another request may have changed
    // one of its other entries meanwhile, whose own write-through can still fail. The next flush
    // writes the table whole.
    // QEMU's vmdk_L2update flushes once after the primary and redundant entries: so do we,
    // or --no-multi-alloc would not measure QEMU's way.
    await this.ext.file.datasync('gt');
  }

  private async writeTable(t: number, buf: Buffer): Promise<void> {
    const writes: Promise<void>[] = [];
    if (this.ext.hasMarkers && this.ext.newTables.has(t)) {
      // A new table in a stream carries its GT marker (numSectors of the table) in front.
      const m = marker.serializeMetaMarker(alignUp(this.ext.gtBytes, SECTOR) / SECTOR, marker.TYPE_GT);
      writes.push(this.ext.file.write([m, buf], this.ext.gd[t]! * SECTOR - SECTOR, 'gt'));
      if (this.ext.rgd && this.ext.rgd[t]) writes.push(this.ext.file.write([m, buf], this.ext.rgd[t] * SECTOR - SECTOR, 'gt'));
    } else {
      writes.push(this.ext.file.write(buf, this.ext.gd[t]! * SECTOR, 'gt'));
      if (this.ext.rgd && this.ext.rgd[t]) writes.push(this.ext.file.write(buf, this.ext.rgd[t] * SECTOR, 'gt'));
    }
    this.ext.stats.gtWrites += writes.length;
    await allEnded(writes);
  }

  private async writeDirectories(): Promise<void> {
    if (!this.ext.gdDirty) return;
    // A table made after this flush took its snapshot is not on disk yet: its entry stays 0
    // until a later flush has written it (the GD never points at an unwritten table).
    const pending = this.ext.newTables;
    this.ext.gdDirty = pending.size > 0;
    const writes = [this.ext.file.write(encodeDirectory(this.ext.gd, pending), this.ext.header.gdOffset * SECTOR, 'gd')];
    if (this.ext.rgd) writes.push(this.ext.file.write(encodeDirectory(this.ext.rgd, pending), this.ext.header.rgdOffset * SECTOR, 'gd'));
    this.ext.stats.gdWrites += writes.length;
    try {
      await allEnded(writes);
    } catch (e) {
      // Still to be written: were it left clean, the next flush would find nothing to do and the
      // new tables would never be reachable (their grains lost, the image still checking clean).
      this.ext.gdDirty = true;
      throw e;
    }
  }

  /**
   * Table write-backs one at a time: a flush writes the snapshot it took before its data barrier,
   * so an overlapping flush or write-through could otherwise land a newer table first and have it
   * overwritten by the older snapshot, losing an acknowledged write (found by the crash-state test).
   */
  private serial(fn: () => Promise<void>): Promise<void> {
    return this.tableWrites.run(0, EVERYTHING, false, fn);
  }

  /** Write-back in the spec's order: data durable → grain tables → grain directory → footer. */
  private async flushOnce(): Promise<void> {
    if (this.ext.readOnly) return;
    const dirty = this.ext.cache.dirtyIndexes();
    if (dirty.length > 0 || this.ext.gdDirty || this.footerDirty) {
      const snaps = dirty.map((t) => {
        const table = this.ext.cache.peek(t)!;
        return { t, table, version: table.version, buf: Buffer.from(table.buf) };
      });
      this.coverReserved();
      await this.ext.file.datasync('data');
      await allEnded(snaps.map((s) => this.writeTable(s.t, s.buf)));
      for (const s of snaps) {
        s.table.writtenVersion = Math.max(s.table.writtenVersion, s.version);
        this.ext.newTables.delete(s.t);
      }
      if (this.ext.gdDirty) {
        await this.ext.file.datasync('gt');
        await this.writeDirectories();
      }
      if (this.footerDirty) await this.writeFooter();
      this.ext.cache.trim();
    }
    await this.ext.file.datasync();
  }

  /**
   * Extends the file over every grain and table reserved so far (before the data barrier, so the
   * new size is durable with the data). A new grain's zero tail is not written (grain-allocator.ts,
   * writeFreshRun), so until now the grain may end past the end of the file; once a table points
   * at it, it must not: the end of the file is where the next session's grains go. Never shrinks
   * (a streamOptimized footer lies past nextFree), and synchronous: grains reserved after this
   * moment may already be in flight, and an ftruncate that ran after their write would cut it.
   */
  private coverReserved(): void {
    this.ext.file.extendTo(this.ext.nextFree);
  }

  /** streamOptimized with the GD at the end: footer marker + header copy + end-of-stream after the last grain. */
  private async writeFooter(): Promise<void> {
    this.footerDirty = false;
    const at = this.ext.nextFree;
    const footerHeader = hdr.serialize(this.ext.header);
    try {
      await this.ext.file.write(
        [marker.serializeMetaMarker(1, marker.TYPE_FOOTER), footerHeader, marker.serializeMetaMarker(0, marker.TYPE_EOS)],
        at,
        'header',
      );
      await this.ext.file.truncate(at + 3 * SECTOR);
    } catch (e) {
      // New grains went over the old footer: without this one the image does not open.
      this.footerDirty = true;
      throw e;
    }
    this.footerAt = at;
    // Keep appending over the footer next time, as on open.
    this.ext.nextFree = at;
  }
}
