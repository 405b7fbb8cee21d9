import type { ExtentMapping } from './extent';
import { GTE_ZEROED, SECTOR } from './sparse-header';

/** What mapping a hosted sparse extent's grains needs to know about it. */
export interface GrainGeometry {
  readonly grainBytes: number;
  readonly gtEntries: number;
  readonly size: number; // guest bytes of the extent
  readonly compressed: boolean; // streamOptimized: allocated grains are compressed
  readonly zeroGrainAllowed: boolean; // GTE_ZEROED entries mean "reads as zeros"
}

/**
 * The answer for the first bytes of [offset, offset+length) (extent offsets) from grain table
 * `table` (the one holding `offset`'s grain): its kind and how far it holds — grains of one
 * kind, data grains contiguous on the host, one compressed grain at most, never past the table.
 */
export function mapGrains(x: GrainGeometry, table: Buffer, offset: number, length: number): ExtentMapping {
  const G = x.grainBytes;
  let g = Math.floor(offset / G);
  const t = Math.floor(g / x.gtEntries);
  const limit = Math.min(offset + length, (t + 1) * x.gtEntries * G, x.size);
  const base = t * x.gtEntries;
  const entry = (i: number) => table.readUInt32LE((i - base) * 4);
  const isZero = (e: number) => e === GTE_ZEROED && x.zeroGrainAllowed;
  const first = entry(g);
  const within = offset - g * G;
  if (first !== 0 && !isZero(first) && x.compressed) {
    return { kind: 'compressed', length: Math.min(limit, (g + 1) * G) - offset, hostOffset: first * SECTOR, grainOffset: g * G };
  }
  const kind = first === 0 ? 'unallocated' : isZero(first) ? 'zero' : 'data';
  const g0 = g;
  let end = (g + 1) * G;
  for (g = g + 1; end < limit; g++) {
    const e = entry(g);
    if (kind === 'data') {
      if (e !== first + ((g - g0) * G) / SECTOR) break;
    } else if (kind === 'zero' ? !isZero(e) : e !== 0) break;
    end += G;
  }
  const len = Math.min(end, limit) - offset;
  return kind === 'data' ? { kind, length: len, hostOffset: first * SECTOR + within } : { kind, length: len };
}
