import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Image } from '../../../src/formats/types';
import { openImage } from '../../../src/image/open';

export function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `vdiskfs-vmdk-${tag}-`));
}

const ZEROS = Buffer.alloc(1 << 20);

/**
 * SHA-256 of an image's whole raw view, streamed: ranges map() calls zero/unallocated are
 * hashed from a shared zero buffer (a 16 GiB sparse disk costs no reads there).
 */
export async function hashImage(img: Image): Promise<string> {
  const h = createHash('sha256');
  const chunk = 64 << 20;
  const buf = Buffer.alloc(1 << 20);
  for (let off = 0; off < img.virtualSize; off += chunk) {
    const len = Math.min(chunk, img.virtualSize - off);
    for (const x of await img.map(off, len)) {
      const zero = x.kind === 'zero' || x.kind === 'unallocated';
      for (let d = 0; d < x.length; ) {
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

export async function hashFile(file: string, opts: { noMultiAlloc?: boolean } = {}): Promise<string> {
  const img = await openImage(file, { writable: false, ...opts });
  try {
    return await hashImage(img);
  } finally {
    await img.close();
  }
}

export function corpusDir(): string {
  if (process.env['VDISKFS_CORPUS']) return process.env['VDISKFS_CORPUS'];
  const rel = path.resolve(__dirname, '../../../../shared/corpus');
  if (fs.existsSync(rel)) return rel;
  return '/work/shared/corpus';
}
