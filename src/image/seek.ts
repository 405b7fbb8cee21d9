/**
 * SEEK_DATA / SEEK_HOLE from the drivers' maps, through backing chains, without reading data.
 * A hole is anything that reads as zeros without stored data: unallocated ranges, zero
 * clusters/grains (qemu-img map's "zero"), and the part of a shorter backing file's range past
 * its end. The map is walked in windows that grow, so a seek near data costs one small map call
 * and a seek across a huge empty disk a few.
 */
import type { Image } from '../formats/types';

const FIRST_WINDOW = 64 << 20;
const MAX_WINDOW = 16 * 2 ** 30;

/**
 * The first offset >= `offset` where data starts (`want` 'data') or a hole starts ('hole').
 * -1 when there is no data from `offset` to `end`; a hole search ends at `end` at the latest.
 */
export async function seekExtent(image: Image, offset: number, want: 'data' | 'hole', end = image.virtualSize): Promise<number> {
  let window = FIRST_WINDOW;
  for (let pos = offset; pos < end;) {
    const len = Math.min(window, end - pos);
    const hit = await firstIn(image, pos, len, want);
    if (hit >= 0) return hit;
    pos += len;
    window = Math.min(window * 4, MAX_WINDOW);
  }
  return want === 'hole' ? end : -1;
}

async function firstIn(image: Image, pos: number, len: number, want: 'data' | 'hole'): Promise<number> {
  for (const x of await image.map(pos, len)) {
    const from = Math.max(x.offset, pos);
    const to = x.offset + x.length;
    if (x.kind === 'backing') {
      const b = image.backingImage?.();
      const inside = b ? Math.min(to, b.virtualSize) : from;
      if (inside > from) {
        const hit = await firstIn(b!, from, inside - from, want);
        if (hit >= 0) return hit;
      }
      if (inside < to && want === 'hole') return Math.max(inside, from);
      continue;
    }
    if ((x.kind === 'data') === (want === 'data')) return from;
  }
  return -1;
}
