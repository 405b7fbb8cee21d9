/**
 * Sector bitmaps of a differencing disk being written ([MS-VHDX] 2.5.1.2): one 1 MiB block per
 * chunk, one bit per logical sector (least significant bit first), set = the sector is in this
 * file. The spec consults them only for PARTIALLY_PRESENT blocks; we still set the bits of every
 * block we make FULLY_PRESENT, because readers such as libvhdi (vhdimount) read a differencing
 * disk's bitmap whatever the block state. Changed 4 KiB sectors go through the log with the BAT's.
 */
import type { HostFile } from '../../io/host-file';
import * as bat from './bat';
import type { BatTable } from './bat-table';
import type { DirtySectors } from './metadata-log';

export class SectorBitmaps implements DirtySectors {
  private readonly loaded = new Map<number, Promise<Buffer>>();
  private readonly bufs = new Map<number, Buffer>();
  private readonly dirty = new Map<string, number>(); // `${chunk}:${sector}` → version
  private version = 0;

  constructor(
    private readonly f: HostFile,
    private readonly table: BatTable,
    /** Reserves 1 MiB at the end of the file (grown), for a chunk whose bitmap block is NOT_PRESENT. */
    private readonly reserve: () => Promise<number>,
  ) {}

  private load(chunk: number): Promise<Buffer> {
    let p = this.loaded.get(chunk);
    if (!p) {
      p = (async () => {
        const b = Buffer.alloc(bat.MiB);
        const host = this.table.bitmapHost(chunk);
        if (host !== undefined) await this.f.read(b, host, 'bitmap');
        else this.table.setBitmap(chunk, await this.reserve()); // fresh space: all zeros, as the buffer
        this.bufs.set(chunk, b);
        return b;
      })();
      p.catch(() => this.loaded.delete(chunk));
      this.loaded.set(chunk, p);
    }
    return p;
  }

  /** Marks every sector of payload block `block` present. */
  async markBlock(block: number): Promise<void> {
    const g = this.table.g;
    const chunk = Math.floor(block / g.chunkRatio);
    const bm = await this.load(chunk);
    const perBlock = g.blockSize / g.logicalSectorSize; // a multiple of 8: whole bytes
    const from = ((block % g.chunkRatio) * perBlock) / 8;
    const to = from + perBlock / 8;
    bm.fill(0xff, from, to);
    for (let s = Math.floor(from / bat.BAT_SECTOR); s * bat.BAT_SECTOR < to; s++) this.dirty.set(`${chunk}:${s}`, ++this.version);
  }

  get dirtyCount(): number {
    return this.dirty.size;
  }

  snapshot(): Array<[number, Buffer, number]> {
    const out: Array<[number, Buffer, number]> = [];
    for (const [key, v] of this.dirty) {
      const [chunk, s] = key.split(':').map(Number) as [number, number];
      const host = this.table.bitmapHost(chunk)!;
      const bm = this.bufs.get(chunk)!; // loaded before it was marked
      out.push([host + s * bat.BAT_SECTOR, Buffer.from(bm.subarray(s * bat.BAT_SECTOR, (s + 1) * bat.BAT_SECTOR)), v]);
    }
    return out;
  }

  committed(offset: number, version: number): void {
    for (const [key, v] of this.dirty) {
      const [chunk, s] = key.split(':').map(Number) as [number, number];
      if (this.table.bitmapHost(chunk)! + s * bat.BAT_SECTOR === offset && v === version) this.dirty.delete(key);
    }
  }
}
