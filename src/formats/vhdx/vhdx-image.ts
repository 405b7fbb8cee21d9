/**
 * A VHDX disk: the BAT in memory answers the mapping question (FormatAccess) for the shared read
 * loop; block-writer.ts allocates; metadata-log.ts commits BAT changes through the log.
 */
import * as path from 'node:path';
import createDebug from 'debug';
import { InFlight } from '../../io/settle';
import { HostFile } from '../../io/host-file';
import { VdiskError } from '../../io/errors';
import { checkRange, DATA, readThrough, readThroughSync, UNALLOCATED, ZERO, type FormatAccess, type Mapping } from '../data-path';
import type { Extent, Image, ImageInfo, ImageStats, OpenOptions } from '../types';
import * as bat from './bat';
import { BatTable } from './bat-table';
import { BlockWriter, refuseReadOnly } from './block-writer';
import { guidText, newGuid } from './guid';
import { HeaderSlots } from './header-slots';
import { readLayout, type VhdxLayout } from './layout';
import { MetadataLog } from './metadata-log';
import { openParent } from './parent';

const log = createDebug('vdiskfs:vhdx');
/** Sector bitmap blocks (1 MiB each) kept in memory. */
const BITMAP_CACHE = 32;

export class VhdxImage implements Image {
  readonly format = 'vhdx';
  readonly virtualSize: number;
  readonly readOnly: boolean;
  readonly table: BatTable;
  readonly hasParent: boolean;
  readonly leaveAllocated: boolean;
  /** Writes, zeroes and discards completed (counted when done); and how many of them a flush made durable. */
  private changes = 0;
  private durableChanges = 0;
  private readonly bs: number;
  private readonly lss: number;
  private readonly bitmaps = new Map<number, Buffer>();
  /** Where data is read: the file, or (read-only open of a dirty log) the file under the replayed sectors. */
  private readonly dataFile: Pick<HostFile, 'read' | 'readSync' | 'path'>;
  private readonly writer: BlockWriter | undefined;
  private readonly slots: HeaderSlots;
  private readonly metaLog: MetadataLog | undefined;
  private session: Promise<void> | undefined;
  private sessionOpen = false;
  private closed = false;
  /** Requests running (close waits for them). */
  private readonly inFlight = new InFlight();

  private constructor(
    readonly path: string,
    readonly f: HostFile,
    readonly layout: VhdxLayout,
    readonly parent: Image | undefined,
    readonly parentFile: string | undefined,
    readOnly: boolean,
  ) {
    this.virtualSize = layout.meta.virtualSize;
    this.readOnly = readOnly;
    this.hasParent = layout.meta.hasParent;
    this.leaveAllocated = layout.meta.leaveBlockAllocated;
    this.bs = layout.meta.blockSize;
    this.lss = layout.meta.logicalSectorSize;
    this.access = {
      backing: parent,
      mapSync: (offset, length, out) => this.mapSync(offset, length, out),
      map: (offset, length, out) => this.mapInto(offset, length, out),
    };
    const overlay = layout.overlay;
    this.dataFile = overlay
      ? {
          path: f.path,
          read: async (into, pos, tag) => {
            const n = await f.read(into, pos, tag);
            overlay.apply(into, pos);
            return n;
          },
          readSync: (into, pos, tag) => {
            if (!f.readSync(into, pos, tag)) return false;
            overlay.apply(into, pos);
            return true;
          },
        }
      : f;
    this.table = new BatTable(layout.bat, layout.geometry, layout.regions.bat.offset);
    this.slots = new HeaderSlots(f, layout.header, layout.slot);
    if (!readOnly) {
      this.writer = new BlockWriter(this, layout.fileSize);
      const w = this.writer;
      this.metaLog = new MetadataLog(f, this.slots, { offset: layout.header.logOffset, length: layout.header.logLength }, () => w.fileSize);
    }
  }

  /** What the shared read loop asks (data-path.ts). */
  private readonly access: FormatAccess;

  /** The current header's DataWriteGuid: what a child's parent_linkage must name. */
  get dataWriteGuid(): string {
    return guidText(this.slots.header.dataWriteGuid);
  }

  static async open(file: string, opts: OpenOptions): Promise<VhdxImage> {
    const f = await HostFile.open(file, opts.writable);
    let parent: Image | undefined;
    try {
      const layout = await readLayout(file, f, opts.writable);
      if (layout.replayed > 0)
        log('%s: replayed %d log entries %s', file, layout.replayed, opts.writable ? 'on disk' : 'in memory (file unchanged)');
      let parentFile: string | undefined;
      if (layout.meta.hasParent) ({ parent, parentFile } = await openParent(file, layout.meta, opts));
      log(
        'open %s: %d bytes, block %d, parent %s, %s',
        file,
        layout.meta.virtualSize,
        layout.meta.blockSize,
        parentFile ?? '-',
        opts.writable ? 'rw' : 'ro',
      );
      return new VhdxImage(file, f, layout, parent, parentFile, !opts.writable);
    } catch (e) {
      await Promise.allSettled([f.close(), parent?.close()]);
      throw e;
    }
  }

  // ---- mapping (FormatAccess) ----

  mapSync(offset: number, length: number, out: Mapping): boolean {
    const block = Math.floor(offset / this.bs);
    const inBlock = offset - block * this.bs;
    let n = Math.min(length, this.bs - inBlock);
    const s = this.table.state(block);
    out.file = this.dataFile;
    if (s === bat.FULLY_PRESENT || (s === bat.PARTIALLY_PRESENT && !this.hasParent)) {
      out.kind = DATA;
      out.host = this.table.host(block) + inBlock;
    } else if (s === bat.PARTIALLY_PRESENT) {
      const g = this.table.g;
      const chunk = Math.floor(block / g.chunkRatio);
      const bm = this.bitmaps.get(chunk);
      if (!bm) return false;
      // One bit per logical sector of the chunk, least significant bit first ([MS-VHDX] 2.5.1.2).
      const first = (block % g.chunkRatio) * (this.bs / this.lss) + Math.floor(inBlock / this.lss);
      const bit = (k: number) => (bm[k >>> 3]! >>> (k & 7)) & 1;
      const set = bit(first);
      let run = (Math.floor(inBlock / this.lss) + 1) * this.lss - inBlock;
      for (let k = first + 1; run < n && bit(k) === set; k++) run += this.lss;
      n = Math.min(n, run);
      out.kind = set ? DATA : UNALLOCATED;
      out.host = this.table.host(block) + inBlock;
    } else if (s === bat.NOT_PRESENT) {
      out.kind = UNALLOCATED;
    } else {
      out.kind = ZERO;
    }
    out.length = n;
    return true;
  }

  async mapInto(offset: number, length: number, out: Mapping): Promise<void> {
    if (this.mapSync(offset, length, out)) return;
    const chunk = Math.floor(Math.floor(offset / this.bs) / this.table.g.chunkRatio);
    const bm = Buffer.alloc(bat.MiB);
    const host = this.table.bitmapHost(chunk);
    if (host !== undefined) await this.dataFile.read(bm, host, 'bitmap');
    if (this.bitmaps.size >= BITMAP_CACHE) this.bitmaps.delete(this.bitmaps.keys().next().value!);
    this.bitmaps.set(chunk, bm);
    if (!this.mapSync(offset, length, out)) throw VdiskError.io(`${this.path}: sector bitmap of chunk ${chunk} did not load`);
  }

  // ---- Image ----

  async read(offset: number, into: Buffer): Promise<void> {
    checkRange(this, offset, into.length);
    await readThrough(this.access, offset, into);
  }

  readSync(offset: number, into: Buffer): boolean {
    checkRange(this, offset, into.length);
    return readThroughSync(this.access, offset, into);
  }

  readOwn(guest: number, into: Buffer): Promise<void> {
    return readThrough(this.access, guest, into);
  }

  write(offset: number, data: Buffer | Buffer[]): Promise<void> {
    return this.inFlight.track(this.writeNow(offset, data));
  }

  private async writeNow(offset: number, data: Buffer | Buffer[]): Promise<void> {
    if (this.readOnly) refuseReadOnly(this.path);
    const buf = Array.isArray(data) ? (data.length === 1 ? data[0]! : Buffer.concat(data)) : data;
    checkRange(this, offset, buf.length);
    if (buf.length === 0) return;
    await this.startSession();
    await this.writer!.write(offset, buf);
    this.changes++;
  }

  writeSync(offset: number, data: Buffer): boolean {
    if (this.readOnly) refuseReadOnly(this.path);
    checkRange(this, offset, data.length);
    if (!this.sessionOpen || data.length === 0) return false;
    if (!this.writer!.writeSync(offset, data)) return false;
    this.changes++;
    return true;
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.inFlight.track(this.writeZeroesNow(offset, length));
  }

  private async writeZeroesNow(offset: number, length: number): Promise<void> {
    if (this.readOnly) refuseReadOnly(this.path);
    checkRange(this, offset, length);
    if (length === 0) return;
    await this.startSession();
    await this.writer!.zero(offset, length, false);
    this.changes++;
  }

  discard(offset: number, length: number): Promise<void> {
    return this.inFlight.track(this.discardNow(offset, length));
  }

  private async discardNow(offset: number, length: number): Promise<void> {
    if (this.readOnly) refuseReadOnly(this.path);
    checkRange(this, offset, length);
    if (length === 0) return;
    await this.startSession();
    await this.writer!.zero(offset, length, true);
    this.changes++;
  }

  /**
   * The first change after open: new FileWriteGuid and DataWriteGuid in both headers, flushed,
   * before any byte a reader could see changes ([MS-VHDX] 2.2.2: a child's parent_linkage then
   * no longer matches this disk, as it must not once the data changed).
   */
  private startSession(): Promise<void> {
    return (this.session ??= this.metaLog!.exclusive(async () => {
      const fileWriteGuid = newGuid();
      const dataWriteGuid = newGuid();
      await this.slots.update({ fileWriteGuid, dataWriteGuid });
      await this.slots.update({ fileWriteGuid, dataWriteGuid });
      await this.f.datasync('header');
      this.sessionOpen = true;
    }).catch((e: unknown) => {
      // Tried again by the next change: a passing ENOSPC must not leave the image unwritable
      // (and every flush failing) until a remount. No data was written under it.
      this.session = undefined;
      throw e;
    }));
  }

  /**
   * Every change completed before the call made durable: the dirty BAT and bitmap sectors through
   * the log (metadata-log.ts), which starts with a flush of the data; with nothing dirty, a flush.
   * Commits queue one behind the other, so a flush also waits for one already running.
   */
  async flush(): Promise<void> {
    if (this.readOnly || !this.session) return;
    await this.session;
    const target = this.changes;
    if (target === this.durableChanges) return;
    const bitmaps = this.writer!.bitmaps;
    const table = this.table;
    const freed = this.writer!.takeFreed();
    try {
      await this.metaLog!.commit(
        bitmaps
          ? {
              snapshot: () => [...table.snapshot(), ...bitmaps.snapshot()],
              committed: (off, v) => {
                table.committed(off, v);
                bitmaps.committed(off, v);
              },
            }
          : table,
      );
    } catch (e) {
      this.writer!.returnFreed(freed); // still in use on the disk: a later commit frees them
      throw e;
    }
    this.durableChanges = Math.max(this.durableChanges, target);
    // The BAT no longer points at them, durably: their space goes back to the host (never reused
    // in this session, so a write still in flight to one lands in abandoned space).
    for (const host of freed) this.f.punchHole(host, this.bs, 'discard');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.inFlight.drained();
      await this.flush();
    } finally {
      await Promise.allSettled([this.f.close(), this.parent?.close()]);
    }
  }

  backingImage(): Image | undefined {
    return this.parent;
  }

  async map(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length);
    const extents: Extent[] = [];
    const m: Mapping = { kind: ZERO, length: 0, file: undefined, host: 0, size: 0, unit: 0, inflater: undefined };
    for (let pos = offset; pos < offset + length; pos += m.length) {
      await this.mapInto(pos, offset + length - pos, m);
      const kind = m.kind === DATA ? 'data' : m.kind === ZERO ? 'zero' : this.parent ? 'backing' : 'unallocated';
      const last = extents[extents.length - 1];
      const host = m.kind === DATA ? m.host : undefined;
      if (last && last.kind === kind && (host === undefined || last.hostOffset! + last.length === host)) last.length += m.length;
      else extents.push({ offset: pos, length: m.length, kind, ...(host !== undefined ? { hostOffset: host, hostFile: this.path } : {}) });
    }
    return extents;
  }

  hostFiles(): string[] {
    return [this.path];
  }

  stats(): ImageStats {
    return {
      io: { [this.path]: { ...this.f.counters } },
      driver: {
        allocations: this.writer?.allocations ?? 0,
        logCommits: this.metaLog?.commits ?? 0,
        replayedLogEntries: this.layout.replayed,
        dirtyBatSectors: this.table.dirtyCount,
      },
    };
  }

  async info(): Promise<ImageInfo> {
    const st = await this.f.stat();
    const m = this.layout.meta;
    const info: ImageInfo = {
      filename: this.path,
      format: 'vhdx',
      'virtual-size': this.virtualSize,
      'actual-size': st.blocks * 512,
      'cluster-size': m.blockSize,
      'format-specific': {
        type: 'vhdx',
        data: {
          'block-size': m.blockSize,
          'logical-sector-size': m.logicalSectorSize,
          'physical-sector-size': m.physicalSectorSize,
          'log-size': this.layout.header.logLength,
          'leave-blocks-allocated': m.leaveBlockAllocated,
          'has-parent': m.hasParent,
          'disk-id': guidText(m.diskId),
          'data-write-guid': this.dataWriteGuid,
          creator: this.layout.creator,
          'log-replayed-entries': this.layout.replayed,
        },
      },
    };
    if (this.parentFile) {
      info['backing-filename'] = path.basename(this.parentFile);
      info['full-backing-filename'] = this.parentFile;
      info['backing-filename-format'] = 'vhdx';
      if (this.parent) info['backing-image'] = await this.parent.info();
    }
    return info;
  }
}
