import { hashImage, tmpDir as makeTmpDir } from '../../helpers/image-io';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openImage } from '../../../src/image/open';
import * as hdr from '../../../src/formats/vmdk/sparse-header';

export function tmpDir(tag: string): string {
  return makeTmpDir(`vmdk-${tag}`);
}

export { hashImage };

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
