/** Driving an opened Image in driver tests: seeded writes mirrored into a buffer, whole-view reads. */
import * as fs from 'node:fs';
import type { Image } from '../../src/formats/types';
import { rng } from './qemu';

export async function readAll(img: Image): Promise<Buffer> {
  const out = Buffer.alloc(img.virtualSize);
  for (let off = 0; off < out.length; off += 4 << 20) await img.read(off, out.subarray(off, Math.min(out.length, off + (4 << 20))));
  return out;
}

/**
 * Seeded writes of every shape (sub-sector, unaligned, block-crossing, whole blocks), zero writes
 * and discards, some concurrent, applied to `img` and to `mirror` alike. Returns the ops done.
 */
export async function mirroredStorm(img: Image, mirror: Buffer, seed: number, ops: number, unit: number): Promise<number> {
  const r = rng(seed);
  const size = img.virtualSize;
  let done = 0;
  const one = async (): Promise<void> => {
    const k = r();
    const len = k < 0.3 ? 1 + Math.floor(r() * 4096) : k < 0.8 ? 512 * (1 + Math.floor(r() * 64)) : unit * (1 + Math.floor(r() * 2));
    const off = Math.min(size - Math.min(len, size), Math.floor(r() * size));
    const n = Math.min(len, size - off);
    const kind = r();
    if (kind < 0.1) {
      mirror.fill(0, off, off + n);
      await img.writeZeroes(off, n);
    } else if (kind < 0.2) {
      mirror.fill(0, off, off + n);
      await img.discard(off, n);
    } else {
      const data = Buffer.alloc(n, (done % 250) + 3);
      data.copy(mirror, off);
      await img.write(off, data);
    }
    done++;
  };
  for (let i = 0; i < ops; i += 4) {
    // One op at a time (overlapping requests reach a driver in order, the merger sees to it),
    // with a flush racing it now and then.
    await one();
    await Promise.all([one(), r() < 0.5 ? img.flush() : Promise.resolve()]);
  }
  return done;
}

export function writeMirror(file: string, mirror: Buffer): void {
  fs.writeFileSync(file, mirror);
}
