/** Shared helpers of the qcow2 tests: temp folders, full reads through openImage, raw compare, write checks. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Image } from '../../../src/formats/types';
import { expect } from 'vitest';
import { openImage, OpenImageOptions } from '../../../src/image/open';
import { qemuCheck, qemuCompare, qemuImg, qemuRaw } from '../../helpers/qemu';

export function tempDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `vdiskfs-qcow2-${tag}-`));
}

export async function open(file: string, opts: Partial<OpenImageOptions> = {}): Promise<Image> {
  return openImage(file, { writable: false, ...opts });
}

/** Reads the whole virtual disk through our driver, in odd-sized chunks to exercise unaligned paths. */
export async function readAll(img: Image, chunk = 1 << 20): Promise<Buffer> {
  const out = Buffer.alloc(img.virtualSize);
  for (let off = 0; off < img.virtualSize; off += chunk) {
    await img.read(off, out.subarray(off, Math.min(img.virtualSize, off + chunk)));
  }
  return out;
}

/** Our raw view equals qemu-img convert -O raw of the same image (optionally extra convert args). */
export async function expectSameAsQemu(file: string, opts: Partial<OpenImageOptions> = {}, convertOut?: string): Promise<void> {
  const raw = convertOut ?? qemuRaw(file, `${file}.qemu.raw`);
  const img = await open(file, opts);
  try {
    const ours = await readAll(img, 1 << 20);
    const theirs = fs.readFileSync(raw);
    if (ours.length !== theirs.length) throw new Error(`${file}: size ${ours.length} != qemu ${theirs.length}`);
    if (!ours.equals(theirs)) {
      let i = 0;
      while (ours[i] === theirs[i]) i++;
      throw new Error(`${file}: differs from qemu-img convert at byte ${i}`);
    }
    // Same again with small unaligned reads over the first MiB.
    const n = Math.min(img.virtualSize, 1 << 20);
    const small = Buffer.alloc(n);
    for (let off = 0; off < n; off += 3001) await img.read(off, small.subarray(off, Math.min(n, off + 3001)));
    if (!small.equals(theirs.subarray(0, n))) throw new Error(`${file}: unaligned reads differ from qemu`);
  } finally {
    await img.close();
  }
}

/**
 * A fresh writable image of `size` bytes whose first L2 table exists (4 KiB of 0x11 at 0:
 * allocating that table is metadata I/O, the slow path), with a mirror of what it should read.
 */
export async function freshWithTable(
  dir: string,
  name: string,
  size: number,
  opts: string[] = [],
): Promise<{ file: string; img: Image; mirror: Buffer }> {
  const file = path.join(dir, name);
  qemuImg(['create', '-q', '-f', 'qcow2', ...opts, file, String(size)]);
  const img = await openImage(file, { writable: true });
  const mirror = Buffer.alloc(size);
  const first = Buffer.alloc(4096, 0x11);
  await img.write(0, first);
  first.copy(mirror, 0);
  return { file, img, mirror };
}

/** Reads back the mirror, closes, and has QEMU check the image clean and equal to the mirror. */
export async function expectCleanAndEqual(file: string, img: Image, mirror: Buffer): Promise<void> {
  expect((await readAll(img)).equals(mirror)).toBe(true);
  await img.close();
  const check = qemuCheck(file);
  expect(check.ok, check.output).toBe(true);
  fs.writeFileSync(`${file}.mirror`, mirror);
  const cmp = qemuCompare(file, `${file}.mirror`);
  expect(cmp.equal, cmp.output).toBe(true);
}
