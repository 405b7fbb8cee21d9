/**
 * Differencing VHDs (QEMU cannot make them, nor read their parent): a child made by vdiskfs on
 * a parent made by qemu-img reads as the parent overlaid with the child's writes, by our driver
 * and by libvhdi alike, parent untouched; a block only partly in the child (sector bitmap bits
 * clear, as Windows leaves them) reads those sectors from the parent, and a write to it fills
 * the rest from the parent first. A missing or foreign parent leaves the child out, in one line.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { vhdDriver } from '../../../src/formats/vhd';
import { readAll, tmpDir } from '../../helpers/image-io';
import { qemuImg, qemuIo, sha256File } from '../../helpers/qemu';
import { vhdiRead } from '../../helpers/vhdimount';

const dir = tmpDir('vhd-diff');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

async function makeChild(child: string, parentName: string): Promise<void> {
  await vhdDriver.create!(child, {
    size: 0,
    options: {},
    backingFile: parentName,
    backingFormat: 'vpc',
    openBacking: () => Promise.reject(new Error('not used')),
    reach: (name) => Promise.resolve(path.resolve(path.dirname(child), name)),
  });
}

function makeParent(name: string): { file: string } {
  const file = path.join(dir, name);
  qemuImg(['create', '-q', '-f', 'vpc', file, '8M']);
  qemuIo(file, ['write -P 0x41 0 3M', 'write -P 0x42 5M 1M'], 'vpc');
  return { file };
}

describe('differencing VHD', () => {
  it('a child reads as its parent overlaid with its writes (our reader and libvhdi), parent untouched', async () => {
    const parent = makeParent('p1.vhd');
    const child = path.join(dir, 'c1.vhd');
    await makeChild(child, 'p1.vhd');
    const parentSha = sha256File(parent.file);
    const p = await openImage(parent.file, { writable: false });
    const expected = await readAll(p);
    await p.close();
    const img = await openImage(child, { writable: true });
    try {
      expect(img.backingImage?.()?.path).toBe(fs.realpathSync(parent.file));
      const writes: Array<[number, number, number]> = [
        [4096, 8192, 0x62],
        [3 * MiB - 512, 1024, 0x63],
        [100, 10, 0x65],
      ];
      for (const [off, len, v] of writes) {
        await img.write(off, Buffer.alloc(len, v));
        expected.fill(v, off, off + len);
      }
      await img.discard(2 * MiB + 512 * 1024, 256 * 1024); // over the parent's data: zeros, not the parent
      expected.fill(0, 2 * MiB + 512 * 1024, 2 * MiB + 768 * 1024);
      expect((await readAll(img)).equals(expected)).toBe(true);
      const map = await img.map(0, img.virtualSize);
      expect(map.some((x) => x.kind === 'backing')).toBe(true);
      expect(map.some((x) => x.kind === 'data')).toBe(true);
    } finally {
      await img.close();
    }
    expect(sha256File(parent.file)).toBe(parentSha);
    const again = await openImage(child, { writable: false });
    try {
      expect((await readAll(again)).equals(expected)).toBe(true);
    } finally {
      await again.close();
    }
    expect(vhdiRead(child, dir).equals(expected)).toBe(true);
  });

  it('a block partly in the child reads its clear sectors from the parent; a write fills them first', async () => {
    const parent = makeParent('p2.vhd');
    const child = path.join(dir, 'c2.vhd');
    await makeChild(child, 'p2.vhd');
    let img = await openImage(child, { writable: true });
    await img.write(0, Buffer.alloc(64 * 1024, 0x71)); // block 0 stored whole (bitmap all ones)
    await img.close();
    // Clear the bits of sectors 0-7 and 8-11 (MSB first), as a Windows host leaves a block it
    // only partly wrote: those sectors now read from the parent.
    const buf = fs.readFileSync(child);
    const bat = buf.readUInt32BE(1536) * 512;
    buf[bat] = 0x00;
    buf[bat + 1] = 0x0f;
    fs.writeFileSync(child, buf);
    const p = await openImage(parent.file, { writable: false });
    const expected = await readAll(p);
    await p.close();
    expected.fill(0x71, 6 * 1024, 64 * 1024);
    img = await openImage(child, { writable: false });
    const got = await readAll(img);
    await img.close();
    let i = 0;
    while (i < got.length && got[i] === expected[i]) i++;
    expect(i, `first difference at ${i}: ${got[i]} instead of ${expected[i]}`).toBe(got.length);
    expect(vhdiRead(child, dir).equals(expected)).toBe(true);
    // A write into the partial block: the block becomes whole, the parent's sectors copied in.
    img = await openImage(child, { writable: true });
    await img.write(MiB, Buffer.alloc(4096, 0x72));
    expected.fill(0x72, MiB, MiB + 4096);
    await img.close();
    img = await openImage(child, { writable: false });
    expect((await readAll(img)).equals(expected)).toBe(true);
    await img.close();
    expect(
      fs
        .readFileSync(child)
        .subarray(bat, bat + 512)
        .every((b) => b === 0xff),
    ).toBe(true);
    expect(vhdiRead(child, dir).equals(expected)).toBe(true);
  });

  it('a missing parent, or a file of that name that is another disk, leaves the child out in one line', async () => {
    makeParent('p3.vhd');
    const child = path.join(dir, 'c3.vhd');
    await makeChild(child, 'p3.vhd');
    fs.renameSync(path.join(dir, 'p3.vhd'), path.join(dir, 'p3-moved.vhd'));
    await expect(openImage(child, { writable: false })).rejects.toThrow(/parent VHD .*p3\.vhd.* not found/);
    qemuImg(['create', '-q', '-f', 'vpc', path.join(dir, 'p3.vhd'), '8M']); // same name, other disk
    await expect(openImage(child, { writable: false })).rejects.toThrow(/parent p3\.vhd has Unique Id .* the child expects/);
  });

  it('a locator naming a file outside the folder is refused by the confinement rule', async () => {
    const sub = path.join(dir, 'sub');
    fs.mkdirSync(sub);
    makeParent('p4.vhd');
    const child = path.join(sub, 'c4.vhd');
    await makeChild(child, '../p4.vhd'); // the child names ..\p4.vhd
    await expect(openImage(child, { writable: false })).rejects.toThrow(/outside/);
  });
});
