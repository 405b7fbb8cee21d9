import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Image } from '../../../src/formats/types';
import { vhdxDriver } from '../../../src/formats/vhdx';
import { openImage } from '../../../src/image/open';
import { reachAnywhere } from '../../helpers/reach';

export function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `vdiskfs-vhdx-${tag}-`));
}

const ZEROS = Buffer.alloc(4 << 20);

/**
 * SHA-256 of an image's whole raw view, read in 4 MiB pieces; ranges map() calls zero or
 * unallocated (without a parent) are hashed from a zero buffer, so a 10 GiB sparse disk is cheap.
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

export async function readAll(file: string): Promise<Buffer> {
  const img = await openImage(file, { writable: false });
  try {
    const b = Buffer.alloc(img.virtualSize);
    for (let off = 0; off < b.length; off += 4 << 20) await img.read(off, b.subarray(off, Math.min(b.length, off + (4 << 20))));
    return b;
  } finally {
    await img.close();
  }
}

export function rmrf(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

/** A differencing child of `parent` made by our create (qemu-img cannot make one). */
export async function createChild(child: string, parent: string, options: Record<string, string> = {}): Promise<void> {
  await vhdxDriver.create!(child, {
    size: 0,
    options,
    backingFile: parent,
    reach: reachAnywhere,
    openBacking: (p) => openImage(p, { writable: false }),
  });
}
