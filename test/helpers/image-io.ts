/**
 * Driving an opened Image in driver tests: scratch folders, whole-view reads and hashes, seeded
 * writes mirrored into a buffer, and the verdict on a hostile image.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { expect } from 'vitest';
import type { Image } from '../../src/formats/types';
import { isVdiskError } from '../../src/io/errors';
import { openImage } from '../../src/image/open';
import { rng } from './qemu';

/** A scratch folder `vdiskfs-<tag>-XXXXXX` under the system's temp folder. */
export function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `vdiskfs-${tag}-`));
}

const ZEROS = Buffer.alloc(4 << 20);

/**
 * SHA-256 of an image's whole raw view, read in 4 MiB pieces; ranges map() calls zero or
 * unallocated are hashed from a zero buffer, so a sparse 16 GiB disk costs no reads there.
 */
export async function hashImage(img: Image): Promise<string> {
  const h = createHash('sha256');
  const chunk = 256 << 20;
  const buf = Buffer.alloc(4 << 20);
  for (let off = 0; off < img.virtualSize; off += chunk) {
    const len = Math.min(chunk, img.virtualSize - off);
    for (const x of await img.map(off, len)) {
      const zero = x.kind === 'zero' || x.kind === 'unallocated';
      for (let d = 0; d < x.length;) {
        const n = Math.min(x.length - d, buf.length);
        if (zero) h.update(ZEROS.subarray(0, n));
        else {
          const b = buf.subarray(0, n);
          await img.read(x.offset + d, b);
          h.update(b);
        }
        d += n;
      }
    }
  }
  return h.digest('hex');
}

/**
 * What a possibly hostile image does when the mount opens it writable: 'opened' when it opens,
 * reads whole and takes a 4 KiB write at `writeAt`; else its error, which must be one VdiskError
 * line (never a crash, a hang or a stack).
 */
export async function openVerdict(file: string, writeAt: number): Promise<string> {
  try {
    const img = await openImage(file, { writable: true, checkExtension: true }); // as the mount opens it
    try {
      await readAll(img);
      await img.write(writeAt, Buffer.alloc(4096, 1)); // writing must stay inside the file's own blocks
    } finally {
      await img.close();
    }
    return 'opened';
  } catch (e) {
    expect(isVdiskError(e), String(e)).toBe(true);
    expect((e as Error).message.split('\n')).toHaveLength(1);
    return (e as Error).message;
  }
}

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
