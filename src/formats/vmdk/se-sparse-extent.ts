import type { HostFile } from '../../io/host-file';
import { VdiskError } from '../../io/errors';
import type { Access } from './descriptor';
import type { ExtentMapping, VmdkExtent } from './extent';
import * as se from './se-sparse-header';
import { SECTOR } from './sparse-header';

const MAX_GD_BYTES = 64 << 20;
const MAX_CACHED_TABLES = 256; // 32 KiB each

/**
 * An ESXi seSparse extent, read-only (as in QEMU): a u64 grain directory whose entries name a
 * grain table by index, u64 grain-table entries with a type nibble (0 unallocated, 1/2 zero,
 * 3 allocated with the grain index split over two bit fields).
 */
export class SeSparseExtent implements VmdkExtent {
  readonly type = 'SESPARSE';
  readonly grainBytes: number;
  private readonly gtEntries: number;
  private readonly tables = new Map<number, Buffer>();

  private constructor(
    readonly file: HostFile,
    readonly access: Access,
    readonly size: number,
    readonly fileName: string,
    private readonly h: se.SeSparseHeader,
    private readonly gd: Buffer,
  ) {
    this.grainBytes = h.grainSize * SECTOR;
    this.gtEntries = (h.grainTableSize * SECTOR) / 8;
  }

  static async open(
    file: HostFile,
    access: Access,
    size: number,
    fileName: string,
    writable: boolean,
    warn: (m: string) => void,
  ): Promise<SeSparseExtent> {
    const head = Buffer.alloc(se.SIZE);
    await file.read(head, 0, 'header');
    const h = se.parse(head);
    const vol = Buffer.alloc(SECTOR);
    await file.read(vol, h.volatileHeaderOffset * SECTOR, 'header');
    se.checkVolatile(vol);
    const fileSize = await file.size();
    const gdBytes = h.grainDirSize * SECTOR;
    if (gdBytes > MAX_GD_BYTES || h.grainDirOffset * SECTOR + gdBytes > fileSize)
      throw VdiskError.corrupt(`${fileName}: seSparse grain directory out of range`);
    if (size > h.capacity * SECTOR) throw VdiskError.corrupt(`${fileName}: descriptor extent size larger than the seSparse capacity`);
    const gd = Buffer.alloc(gdBytes);
    await file.read(gd, h.grainDirOffset * SECTOR, 'gd');
    if (writable && access === 'RW') warn(`${fileName}: seSparse extent opened read-only: vdiskfs does not write this format`);
    return new SeSparseExtent(file, access, size, fileName, h, gd);
  }

  private async table(t: number): Promise<Buffer | null> {
    if (t * 8 >= this.gd.length) throw VdiskError.corrupt(`${this.fileName}: seSparse grain directory index ${t} out of range`);
    const e = this.gd.readBigUInt64LE(t * 8);
    if (e === 0n) return null;
    if (e >> 32n !== 0x10000000n) throw VdiskError.corrupt(`${this.fileName}: seSparse grain directory entry ${t} is invalid`);
    const hit = this.tables.get(t);
    if (hit) return hit;
    const buf = Buffer.alloc(this.gtEntries * 8);
    await this.file.read(buf, (this.h.grainTablesOffset + Number(e & 0xffffffffn) * this.h.grainTableSize) * SECTOR, 'gt');
    this.tables.set(t, buf);
    if (this.tables.size > MAX_CACHED_TABLES) this.tables.delete(this.tables.keys().next().value as number);
    return buf;
  }

  async map(offset: number, length: number): Promise<ExtentMapping> {
    const G = this.grainBytes;
    const g = Math.floor(offset / G);
    const t = Math.floor(g / this.gtEntries);
    const tableEnd = Math.min((t + 1) * this.gtEntries * G, this.size);
    const limit = Math.min(offset + length, tableEnd);
    const table = await this.table(t);
    if (!table) return { kind: 'unallocated', length: limit - offset };
    const decode = (i: number): { kind: 'data' | 'zero' | 'unallocated'; host: number } => {
      const e = table.readBigUInt64LE((i % this.gtEntries) * 8);
      switch (e >> 60n) {
        case 0n:
          if (e !== 0n) throw VdiskError.corrupt(`${this.fileName}: seSparse grain entry ${i} is invalid`);
          return { kind: 'unallocated', host: 0 };
        case 1n: // SCSI-unmapped grain: reads as zeros
        case 2n:
          return { kind: 'zero', host: 0 };
        case 3n: {
          const idx = ((e & 0x0fff000000000000n) >> 48n) | ((e & 0x0000ffffffffffffn) << 12n);
          const sector = BigInt(this.h.grainsOffset) + idx * BigInt(this.h.grainSize);
          if (sector * 512n > BigInt(Number.MAX_SAFE_INTEGER))
            throw VdiskError.corrupt(`${this.fileName}: seSparse grain ${i} out of range`);
          return { kind: 'data', host: Number(sector) * SECTOR };
        }
        default:
          throw VdiskError.corrupt(`${this.fileName}: seSparse grain entry ${i} has an unknown type`);
      }
    };
    const first = decode(g);
    const within = offset - g * G;
    let end = (g + 1) * G;
    for (let i = g + 1; end < limit; i++) {
      const d = decode(i);
      if (d.kind !== first.kind || (d.kind === 'data' && d.host !== first.host + (i - g) * G)) break;
      end += G;
    }
    const len = Math.min(end, limit) - offset;
    return first.kind === 'data' ? { kind: 'data', length: len, hostOffset: first.host + within } : { kind: first.kind, length: len };
  }

  async write(): Promise<void> {
    throw VdiskError.readOnly(`${this.fileName}: seSparse extents are read-only`);
  }

  async writeZeroes(): Promise<void> {
    throw VdiskError.readOnly(`${this.fileName}: seSparse extents are read-only`);
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    await this.file.close();
  }

  counters(): Record<string, number> {
    return {};
  }
}
