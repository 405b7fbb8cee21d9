/**
 * The BAT of a dynamic or differencing VHD as a BlockTable (../blocks/block-table.ts): one
 * big-endian u32 per block, the sector where the block's sector bitmap starts (its data follows
 * the bitmap), or all ones for a block not stored.
 *
 * Write order (DESIGN.md "VHD"): new blocks go where the footer was, bitmap and data and then the
 * footer at the new end, in ONE write; only after a barrier does the BAT point at them. A power
 * cut before the BAT write leaves the old BAT (the new bytes are a leak QEMU and vdiskfs reuse,
 * since both place the next block after the last one the BAT names) and a footer at the end or,
 * if the write tore, the copy at offset 0 that dynamic disks are opened by.
 * A differencing disk's block whose sectors are partly in the parent is made whole the same
 * way: the missing sectors are filled from the parent in place, then its bitmap (all ones) is
 * written after the barrier.
 */
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { BLOCK_ABSENT, type BlockTable } from '../blocks/block-table';
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

  async storeBlocks(blocks: number[], contents: Buffer[]): Promise<void> {
    const vec: Buffer[] = [];
    const fresh: number[] = [];
    const inPlace: Promise<void>[] = [];
    for (let i = 0; i < blocks.length; i++) {
      const b = blocks[i]!;
      const e = this.rawEntry(b);
      if (e === BAT_UNUSED) {
        fresh.push(b);
        vec.push(this.full, contents[i]!);
      } else {
        // A differencing block only partly here: its missing sectors now come from the parent.
        inPlace.push(this.file.write(contents[i]!, e * SECTOR + this.bitmapBytes, 'data'));
        this.bitmaps?.set(b, Buffer.from(this.full));
        this.dirtyBitmaps.add(b);
      }
    }
    const at = this.freeOffset;
    if (fresh.length) {
      const end = at + fresh.length * (this.bitmapBytes + this.blockSize);
      if (end / SECTOR >= BAT_UNUSED) throw VdiskError.noSpace(`${this.file.path}: a VHD cannot grow past 2 TiB of file`);
      vec.push(this.footer);
      this.freeOffset = end;
      inPlace.push(this.file.write(vec, at, 'data'));
    }
    await Promise.all(inPlace);
    fresh.forEach((b, i) => {
      const sector = (at + i * (this.bitmapBytes + this.blockSize)) / SECTOR;
      this.bat.writeUInt32BE(sector, b * 4);
      this.dirtySectors.add(Math.floor((b * 4) / SECTOR));
      this.bitmaps?.set(b, Buffer.from(this.full));
    });
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
    await Promise.all(writes);
  }
}

export function bitmapBytesFor(blockSize: number): number {
  return Math.ceil(blockSize / SECTOR / 8 / SECTOR) * SECTOR;
}
