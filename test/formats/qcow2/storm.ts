/** Seeded random write storms against an image and a mirror Buffer (shared by several tests). */
import type { Image } from '../../../src/formats/types';
import { rng } from '../../helpers/qemu';

export interface StormOptions {
  seed: number;
  ops: number;
  maxLen?: number; // default 2 MiB
  writers?: number; // concurrent writers on disjoint ranges per round
  zeroFraction?: number;
  /** Half the writes try Image.writeSync first (the O_DIRECT fast path), among the asynchronous ones. */
  trySync?: boolean;
}

export interface StormResult {
  /** Writes done by Image.writeSync. */
  syncWrites: number;
}

/**
 * Rounds of: several concurrent writes on non-overlapping ranges, then a few sequential
 * overlapping ones. Lengths 1 byte .. maxLen, unaligned, some all-zero buffers, some writeZeroes.
 */
export async function storm(img: Image, mirror: Buffer, o: StormOptions): Promise<StormResult> {
  const r = rng(o.seed);
  const size = img.virtualSize;
  const maxLen = Math.min(o.maxLen ?? 2 << 20, size);
  const writers = o.writers ?? 4;
  const zf = o.zeroFraction ?? 0.15;
  const randLen = (): number => {
    const x = r();
    if (x < 0.2) return 1 + Math.floor(r() * 512);
    if (x < 0.7) return 1 + Math.floor(r() * 65536 * 2);
    return 1 + Math.floor(r() * maxLen);
  };
  const makeData = (len: number): Buffer => {
    if (r() < zf) return Buffer.alloc(len);
    const b = Buffer.allocUnsafe(len);
    const v = Math.floor(r() * 256);
    for (let i = 0; i < len; i += 509) b.fill((v + i) & 0xff, i, Math.min(len, i + 509));
    return b;
  };
  const result: StormResult = { syncWrites: 0 };
  /** A write: synchronous when asked and the driver can (the buffer is then reused at once, as FUSE does), else write(). */
  const write = (off: number, d: Buffer): Promise<void> => {
    if (o.trySync && img.writeSync && r() < 0.5 && img.writeSync(off, d)) {
      result.syncWrites++;
      d.fill(0xee); // the caller's buffer: free again once writeSync returns
      return Promise.resolve();
    }
    return img.write(off, Buffer.from(d));
  };
  let done = 0;
  while (done < o.ops) {
    // Concurrent phase: disjoint slots.
    const slot = Math.floor(size / writers);
    const tasks: Promise<void>[] = [];
    for (let w = 0; w < writers && done < o.ops; w++, done++) {
      const len = Math.min(randLen(), slot);
      const off = w * slot + Math.floor(r() * (slot - len + 1));
      if (r() < 0.1) {
        mirror.fill(0, off, off + len);
        tasks.push(img.writeZeroes(off, len));
      } else {
        const d = makeData(len);
        d.copy(mirror, off);
        tasks.push(write(off, d));
      }
    }
    await Promise.all(tasks);
    // Sequential overlapping phase.
    for (let k = 0; k < 3 && done < o.ops; k++, done++) {
      const len = randLen();
      const off = Math.floor(r() * (size - len + 1));
      const d = makeData(len);
      d.copy(mirror, off);
      await write(off, d);
    }
    if (r() < 0.05) await img.flush();
  }
  return result;
}
