/**
 * The VDI block map: one little-endian u32 per guest block, the index of the block's slot in the
 * data area (offData + slot * (cbBlockExtra + cbBlock) + cbBlockExtra), or ENTRY_FREE / ENTRY_ZERO.
 *
 * Write order (DESIGN.md "VDI"): block data first, then the block map entry, then the header's
 * allocated count. New blocks take the next slots at the end of the data area; nothing is ever
 * freed (a discarded block keeps its slot and has its bytes punched), so slots stay dense and
 * cBlocksAllocated always equals the number of allocated entries, as `qemu-img check` wants and
 * as QEMU's own allocator (next slot = cBlocksAllocated) needs.
 * The header and the dirty map sectors go out as one write when the map sits right behind the
 * header (qemu-img and VirtualBox lay it out so): they become durable together. Otherwise the
 * header goes first, so a torn write leaves a leaked slot, never a slot handed out twice.
 */
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { allEnded } from '../../io/settle';
import { BLOCK_ABSENT, BLOCK_ZERO, type BlockContent, type BlockTable } from '../blocks/block-table';
import { blockBytes, Segments } from '../blocks/segments';
import { ENTRY_FREE, ENTRY_ZERO, SECTOR, setBlocksAllocated, type VdiHeader } from './header';

/** Header and map are written as one when the bytes up to the last dirty map sector are at most this. */
const ONE_WRITE_MAX = 4 << 20;

export class VdiBlockMap implements BlockTable {
  readonly blockSize: number;
  readonly virtualSize: number;
  /**
   * Next free slot: past every slot in use. The header's count is not trusted for this: a crash
   * may leave it behind the map (a slot would be handed out twice) or a hostile image far ahead.
   */
  private nextSlot: number;
  private readonly dirtySectors = new Set<number>();
  private headerDirty = false;

  constructor(
    readonly file: HostFile,
    readonly header: VdiHeader,
    /** The header region [0, offsetBmap) as read, rewritten with the new count. */
    private readonly headerRegion: Buffer,
    /** The map as stored (little-endian u32 per block). */
    readonly map: Buffer,
    /** The file's size: slots past it read as zeros without being written. */
    private fileEnd: number,
  ) {
    this.blockSize = header.blockSize;
    this.virtualSize = header.diskSize;
    let next = 0;
    for (let b = 0; b < header.blocks; b++) {
      const e = map.readUInt32LE(b * 4);
      if (e < header.blocks && e + 1 > next) next = e + 1;
    }
    this.nextSlot = next;
    this.allocated = this.allocatedCount();
  }

  /** Allocated entries now (kept as blocks are stored; what cBlocksAllocated must say). */
  private allocated: number;

  /** The raw map entry of a block. */
  rawEntry(block: number): number {
    return this.map.readUInt32LE(block * 4);
  }

  /** Allocated entries, counted from the map. */
  allocatedCount(): number {
    let n = 0;
    for (let b = 0; b < this.header.blocks; b++) if (this.rawEntry(b) < this.header.blocks) n++;
    return n;
  }

  slotOffset(slot: number): number {
    const h = this.header;
    return h.offsetData + slot * (h.blockExtra + h.blockSize) + h.blockExtra;
  }

  entry(block: number): number {
    if (block >= this.header.blocks) return BLOCK_ABSENT;
    const e = this.rawEntry(block);
    if (e === ENTRY_ZERO) return BLOCK_ZERO;
    if (e >= this.header.blocks) return BLOCK_ABSENT; // ENTRY_FREE (others were refused at open)
    return this.slotOffset(e);
  }

  get dirty(): boolean {
    return this.headerDirty || this.dirtySectors.size > 0;
  }

  async storeBlocks(blocks: BlockContent[]): Promise<void> {
    const h = this.header;
    const segs = new Segments();
    const stored: Array<[number, number]> = [];
    // Slots are taken for good only once their data has landed: a failed store must not leave a
    // gap, since QEMU hands out slot cBlocksAllocated next, which a gap makes one in use.
    let next = this.nextSlot;
    for (const c of blocks) {
      // VDI blocks are whole once stored: only absent and zero blocks come here.
      if (this.rawEntry(c.block) < h.blocks) continue;
      if (next >= h.blocks)
        throw VdiskError.noSpace(`${this.file.path}: no VDI slot left (${next} of ${h.blocks}); the block map is inconsistent`);
      const slot = next++;
      const host = this.slotOffset(slot);
      const fresh = host - h.blockExtra >= this.fileEnd;
      if (h.blockExtra && !fresh) segs.add(host - h.blockExtra, Buffer.alloc(h.blockExtra));
      const bytes = blockBytes(c, h.blockSize, fresh);
      segs.add(host + bytes.at, bytes.data);
      stored.push([c.block, slot]);
    }
    if (stored.length === 0) return;
    // A slot written only in part still spans its whole block in the file, as QEMU's do.
    const end = this.slotOffset(stored[stored.length - 1]![1]) + h.blockSize;
    try {
      await segs.write(this.file, 'data');
      if (end > Math.max(this.fileEnd, segs.end)) await this.file.truncate(end);
    } finally {
      // Part of a failed write may have landed: the slots it reached no longer read as zeros
      // (fresh), so their next user writes them whole.
      this.fileEnd = Math.max(this.fileEnd, segs.end);
    }
    this.fileEnd = Math.max(this.fileEnd, end);
    this.nextSlot = next;
    for (const [b, slot] of stored) this.setEntry(b, slot);
    this.allocated += stored.length;
    this.headerDirty = true;
  }

  markZero(block: number): boolean {
    if (this.rawEntry(block) !== ENTRY_FREE) return false;
    this.setEntry(block, ENTRY_ZERO);
    return true;
  }

  private setEntry(block: number, value: number): void {
    this.map.writeUInt32LE(value, block * 4);
    this.dirtySectors.add(Math.floor((block * 4) / SECTOR));
  }

  async writeTables(): Promise<void> {
    const h = this.header;
    const sectors = [...this.dirtySectors].sort((a, b) => a - b);
    this.dirtySectors.clear();
    const wasHeaderDirty = this.headerDirty;
    this.headerDirty = false;
    setBlocksAllocated(this.headerRegion, this.allocated);
    const mapBytes = (s: number) => this.map.subarray(s * SECTOR, Math.min(this.map.length, (s + 1) * SECTOR));
    const lastEnd = sectors.length ? Math.min(this.map.length, (sectors[sectors.length - 1]! + 1) * SECTOR) : 0;
    try {
      if (this.headerRegion.length === h.offsetBmap && h.offsetBmap + lastEnd <= ONE_WRITE_MAX) {
        await this.file.write([this.headerRegion, this.map.subarray(0, lastEnd)], 0, 'bat');
        return;
      }
      if (wasHeaderDirty || sectors.length) await this.file.write(this.headerRegion, 0, 'header');
      await allEnded(sectors.map((s) => this.file.write(mapBytes(s), h.offsetBmap + s * SECTOR, 'bat')));
    } catch (e) {
      // Still dirty: the next flush writes them again. Were they forgotten, that flush would find
      // nothing to write and acknowledge blocks whose entries never reached the disk.
      for (const s of sectors) this.dirtySectors.add(s);
      this.headerDirty ||= wasHeaderDirty || sectors.length > 0;
      throw e;
    }
  }
}
