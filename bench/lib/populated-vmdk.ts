/**
 * A monolithicSparse VMDK whose every grain is allocated, as a disk written end to end would
 * be, without writing its terabytes: qemu-img makes the image (grain directory and every grain
 * table preallocated), then each grain table entry is pointed at the next grain of a data area
 * that stays a hole in the host file (it reads as zeros). The checks and maps of a 2 TiB VMDK
 * with populated tables (#20) run on it, beside qemu-img on the same file.
 *
 * Grain offsets are 32-bit sector numbers, so a fully allocated image must stay under 2 TiB of
 * host file: 2047 GiB is the largest round size that fits.
 */
import * as fs from 'node:fs';
import { parse as parseSparseHeader } from '../../src/formats/vmdk/sparse-header';

const SECTOR = 512;

export function populateGrainTables(file: string): { grains: number; tables: number } {
  const fd = fs.openSync(file, 'r+');
  try {
    const head = Buffer.alloc(SECTOR);
    fs.readSync(fd, head, 0, SECTOR, 0);
    const h = parseSparseHeader(head);
    const grains = Math.ceil(h.capacity / h.grainSize);
    const tables = Math.ceil(grains / h.numGTEsPerGT);
    if (h.overHead + grains * h.grainSize > 0xffffffff) throw new Error(`${file}: too big to allocate every grain (32-bit sectors)`);
    const directory = (at: number): Buffer => {
      const gd = Buffer.alloc(tables * 4);
      fs.readSync(fd, gd, 0, gd.length, at * SECTOR);
      return gd;
    };
    const gd = directory(h.gdOffset);
    const rgd = h.rgdOffset ? directory(h.rgdOffset) : undefined;
    const gt = Buffer.alloc(h.numGTEsPerGT * 4);
    for (let t = 0; t < tables; t++) {
      gt.fill(0);
      for (let i = 0; i < h.numGTEsPerGT; i++) {
        const g = t * h.numGTEsPerGT + i;
        if (g < grains) gt.writeUInt32LE(h.overHead + g * h.grainSize, i * 4);
      }
      fs.writeSync(fd, gt, 0, gt.length, gd.readUInt32LE(t * 4) * SECTOR);
      if (rgd) fs.writeSync(fd, gt, 0, gt.length, rgd.readUInt32LE(t * 4) * SECTOR);
    }
    fs.ftruncateSync(fd, (h.overHead + grains * h.grainSize) * SECTOR);
    return { grains, tables };
  } finally {
    fs.closeSync(fd);
  }
}
