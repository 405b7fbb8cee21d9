/**
 * The size of a VHD disk, by QEMU's rules (block/vpc.c): Virtual PC and QEMU size a disk by its
 * CHS geometry, Hyper-V, Disk2vhd and XenServer by the footer's Current Size; a geometry at the
 * CHS maximum always means Current Size. A view has the size QEMU gives it, so images move
 * between the two without a byte lost or gained.
 */
import { SECTOR } from './dynamic-header';
import type { VhdFooter } from './footer';

/** 65535 cylinders x 16 heads x 255 sectors: the largest geometry, meaning "use Current Size". */
export const MAX_GEOMETRY_SECTORS = 65535 * 16 * 255;
/** QEMU's limit (VHD_MAX_SECTORS): 2040 GiB. */
export const MAX_SECTORS = 0xff000000;

/** Creators whose images are sized by Current Size (QEMU's table; 'tap\0' is XenServer). */
const SIZED_BY_CURRENT = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'];

export function diskSectors(f: VhdFooter): number {
  const chs = f.cylinders * f.heads * f.sectors;
  const byCurrent = SIZED_BY_CURRENT.includes(f.creatorApp) || chs === MAX_GEOMETRY_SECTORS;
  return byCurrent ? Number(f.currentSize / BigInt(SECTOR)) : chs;
}

/** The spec's CHS calculation ("Appendix: CHS Calculation"), as QEMU's calculate_geometry. */
export function geometryOf(totalSectors: number): { cylinders: number; heads: number; sectors: number } {
  const total = Math.min(totalSectors, MAX_GEOMETRY_SECTORS);
  let secs: number;
  let heads: number;
  let cth: number;
  if (total >= 65535 * 16 * 63) {
    secs = 255;
    heads = 16;
    cth = Math.floor(total / secs);
  } else {
    secs = 17;
    cth = Math.floor(total / secs);
    heads = Math.max(4, Math.ceil(cth / 1024));
    if (cth >= heads * 1024 || heads > 16) {
      secs = 31;
      heads = 16;
      cth = Math.floor(total / secs);
    }
    if (cth >= heads * 1024) {
      secs = 63;
      heads = 16;
      cth = Math.floor(total / secs);
    }
  }
  return { cylinders: Math.floor(cth / heads), heads, sectors: secs };
}
