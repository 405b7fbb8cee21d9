import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Image } from '../../../src/formats/types';
import { openImage } from '../../../src/image/open';
import * as hdr from '../../../src/formats/vmdk/sparse-header';

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

export async function hashFile(file: string, opts: { noMultiAlloc?: boolean } = {}): Promise<string> {
  const img = await openImage(file, { writable: false, tuning: { vmdk: { noMultiAlloc: opts.noMultiAlloc } } });
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

/**
 * A hosted sparse extent built by hand (qemu-img only makes 64 KiB grains with preallocated
 * tables): any grain size and table size, every GD/RGD entry 0 so tables get allocated on write.
 */
export function makeHandSparse(
  file: string,
  o: { capacitySectors: number; grainSectors: number; gtes: number; zeroGrain?: boolean },
): void {
  const grains = Math.ceil(o.capacitySectors / o.grainSectors);
  const tables = Math.ceil(grains / o.gtes);
  const gdSectors = Math.ceil((tables * 4) / 512);
  const descSectors = 4;
  const rgdOffset = 1 + descSectors;
  const gdOffset = rgdOffset + gdSectors;
  const overHead = gdOffset + gdSectors;
  const buf = Buffer.alloc(overHead * 512);
  hdr
    .serialize({
      version: o.zeroGrain ? 2 : 1,
      flags: hdr.FLAG_NL_DETECT | hdr.FLAG_RGD | (o.zeroGrain ? hdr.FLAG_ZERO_GRAIN : 0),
      capacity: o.capacitySectors,
      grainSize: o.grainSectors,
      descriptorOffset: 1,
      descriptorSize: descSectors,
      numGTEsPerGT: o.gtes,
      rgdOffset,
      gdOffset,
      overHead,
      uncleanShutdown: 0,
      compressAlgorithm: 0,
    })
    .copy(buf);
  buf.write(
    `# Disk DescriptorFile\nversion=1\nCID=abcdef01\nparentCID=ffffffff\ncreateType="monolithicSparse"\n\n# Extent description\nRW ${o.capacitySectors} SPARSE "${path.basename(file)}"\n\n#DDB\nddb.adapterType = "ide"\n`,
    512,
    'latin1',
  );
  fs.writeFileSync(file, buf);
}
