import { hashImage, tmpDir as makeTmpDir } from '../../helpers/image-io';
import * as fs from 'node:fs';
import { vhdxDriver } from '../../../src/formats/vhdx';
import { openImage } from '../../../src/image/open';
import { reachAnywhere } from '../../helpers/reach';

export function tmpDir(tag: string): string {
  return makeTmpDir(`vhdx-${tag}`);
}

export { hashImage };

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
