/**
 * The BAT of a dynamic or differencing VHD as a BlockTable (../blocks/block-table.ts): one
 * big-endian u32 per block, the sector where the block's sector bitmap starts (its data follows
 * the bitmap), or all ones for a block not stored.
 *
 * Write order (DESIGN.md "VHD"): new blocks go where the footer was, bitmap and data and then the
 * footer at the new end (one write when the blocks are written whole); only after a barrier does
 * the BAT point at them. A power
 * cut before the BAT write leaves the old BAT (the new bytes are a leak QEMU and vdiskfs reuse,
 * since both place the next block after the last one the BAT names) and a footer at the end or,
 * if the write tore, the copy at offset 0 that dynamic disks are opened by.
 * A differencing disk's block whose sectors are partly in the parent is made whole the same
 * way: the missing sectors are filled from the parent in place, then its bitmap (all ones) is
 * written after the barrier.
 */
import { VdiskError } from '../../io/errors';
import { allEnded, started } from '../../io/settle';
import type { HostFile } from '../../io/host-file';
import { BLOCK_ABSENT, type BlockContent, type BlockTable } from '../blocks/block-table';
import { blockBytes, Segments } from '../blocks/segments';
import { BAT_UNUSED, SECTOR, type DynamicHeader } from './dynamic-header';

export class VhdBat implements BlockTable {
  readonly blockSize: number;
  /** Bytes of a block's sector bitmap (one bit per sector, padded to a sector). */
  readonly bitmapBytes: number;
  private freeOffset: number;
  private readonly dirtySectors = new Set<number>();
  private readonly dirtyBitmaps = new Set<number>();
  private readonly full: Buffer;

  constructor(
    readonly file: HostFile,
    readonly header: DynamicHeader,
    readonly virtualSize: number,
    /** The BAT as stored, padded to whole sectors. */
    readonly bat: Buffer,
    /** The footer, written at the end again each time the file grows. */
    private readonly footer: Buffer,
    /** Where the next block goes: past the BAT, every block and every locator's data. */
    freeOffset: number,
    /** Differencing disks: each stored block's sector bitmap; undefined for other disks. */
    private readonly bitmaps: Map<number, Buffer> | undefined,
    /** The file's size: block bytes past it read as zeros without being written. */
    private fileEnd: number,
  ) {
    this.blockSize = header.blockSize;
    this.bitmapBytes = bitmapBytesFor(header.blockSize);
    this.freeOffset = freeOffset;
    this.full = Buffer.alloc(this.bitmapBytes, 0xff);
    if (bitmaps) this.presence = (block, inBlock, max) => this.present(block, inBlock, max);
  }

  readonly presence?: (block: number, inBlock: number, max: number) => number;

  /** Sector offset of the block's bitmap, or BAT_UNUSED. */
  rawEntry(block: number): number {
    return block < this.header.maxTableEntries ? this.bat.readUInt32BE(block * 4) : BAT_UNUSED;
  }

  entry(block: number): number {
    const e = this.rawEntry(block);
    return e === BAT_UNUSED ? BLOCK_ABSENT : e * SECTOR + this.bitmapBytes;
  }

  /** Differencing: runs of sectors in this file (> 0) or in the parent (< 0); bit 7 of byte 0 is sector 0. */
  private present(block: number, inBlock: number, max: number): number {
    const bm = this.bitmaps!.get(block);
    if (!bm) return -max;
    const bit = (s: number) => (bm[s >> 3]! >> (7 - (s & 7))) & 1;
    let s = Math.floor(inBlock / SECTOR);
    const state = bit(s);
    const end = inBlock + max;
    let reach = (s + 1) * SECTOR;
    while (reach < end) {
      s++;
      // Whole bytes at once where the run goes on.
      if ((s & 7) === 0 && reach + 8 * SECTOR <= end && bm[s >> 3] === (state ? 0xff : 0)) {
        reach += 8 * SECTOR;
        s += 7;
        continue;
      }
      if (bit(s) !== state) break;
      reach += SECTOR;
    }
    const n = Math.min(reach, end) - inBlock;
    return state ? n : -n;
  }

  get dirty(): boolean {
    return this.dirtySectors.size > 0 || this.dirtyBitmaps.size > 0;
  }

  async storeBlocks(blocks: BlockContent[]): Promise<void> {
    const segs = new Segments();
    const fresh: Array<[number, number]> = [];
    const inPlace: Promise<void>[] = [];
    const completed: number[] = [];
    let at = this.freeOffset;
    for (const c of blocks) {
      const e = this.rawEntry(c.block);
      if (e === BAT_UNUSED) {
        // Bitmap, then data: past the old footer the host reads zeros, so only the data is written.
        const bytes = blockBytes(c, this.blockSize, at + this.bitmapBytes >= this.fileEnd);
        segs.add(at, this.full);
        segs.add(at + this.bitmapBytes + bytes.at, bytes.data);
        fresh.push([c.block, at]);
        at += this.bitmapBytes + this.blockSize;
      } else {
        // A differencing block only partly here: its missing sectors now come from the parent.
        // Its bitmap says "all here" only once they have landed (below): until then a read of
        // them must still go to the parent, and a write elsewhere in the block must not take
        // it for whole and write in place, where this rebuilt content would land over it.
        inPlace.push(started(this.file.write(c.data, e * SECTOR + this.bitmapBytes + c.at, 'data')));
        completed.push(c.block);
      }
    }
    try {
      if (fresh.length) {
        if (at / SECTOR >= BAT_UNUSED) throw VdiskError.noSpace(`${this.file.path}: a VHD cannot grow past 2 TiB of file`);
        segs.add(at, this.footer); // the footer moves to the new end
        this.freeOffset = at;
        inPlace.push(segs.write(this.file, 'data'));
      }
    } finally {
      await allEnded(inPlace); // every write started ends before the store does, also when one fails
    }
    for (const b of completed) {
      this.bitmaps?.set(b, Buffer.from(this.full));
      this.dirtyBitmaps.add(b);
    }
    this.fileEnd = Math.max(this.fileEnd, at + this.footer.length);
    for (const [b, host] of fresh) {
      this.bat.writeUInt32BE(host / SECTOR, b * 4);
      this.dirtySectors.add(Math.floor((b * 4) / SECTOR));
      this.bitmaps?.set(b, Buffer.from(this.full));
    }
  }

  async writeTables(): Promise<void> {
    const sectors = [...this.dirtySectors].sort((a, b) => a - b);
    const bitmaps = [...this.dirtyBitmaps];
    this.dirtySectors.clear();
    this.dirtyBitmaps.clear();
    const writes: Promise<void>[] = [];
    // Runs of neighbouring BAT sectors go out as one write.
    for (let i = 0; i < sectors.length;) {
      let j = i;
      while (j + 1 < sectors.length && sectors[j + 1] === sectors[j]! + 1) j++;
      const from = sectors[i]! * SECTOR;
      const to = (sectors[j]! + 1) * SECTOR;
      writes.push(this.file.write(this.bat.subarray(from, to), this.header.tableOffset + from, 'bat'));
      i = j + 1;
    }
    for (const b of bitmaps) writes.push(this.file.write(this.bitmaps!.get(b)!, this.rawEntry(b) * SECTOR, 'bitmap'));
    try {
      await allEnded(writes);
    } catch (e) {
      // Still dirty: the next flush writes them again. Were they forgotten, that flush would find
      // nothing to write and acknowledge blocks whose entries never reached the disk.
      for (const s of sectors) this.dirtySectors.add(s);
      for (const b of bitmaps) this.dirtyBitmaps.add(b);
      throw e;
    }
  }
}

export function bitmapBytesFor(blockSize: number): number {
  return Math.ceil(blockSize / SECTOR / 8 / SECTOR) * SECTOR;
}
