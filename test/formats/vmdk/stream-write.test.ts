import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { vmdkDriver } from '../../../src/formats/vmdk/index';
import { qemuCheck, qemuCompare, qemuImg, qemuIo, qemuRaw } from '../../helpers/qemu';
import { corpusDir, hashFile, tmpDir } from './helpers';
import { reachAnywhere } from '../../helpers/reach';

/** streamOptimized writes: new grains appended compressed (as QEMU does), file stays valid; rewrites refused. */
const dir = tmpDir('stream');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

async function appendAndCheck(f: string, writes: Array<[number, number, number]>): Promise<void> {
  const mirror = qemuRaw(f, `${f}.mirror`);
  const fd = fs.openSync(mirror, 'r+');
  const img = await openImage(f, { writable: true });
  try {
    expect(img.readOnly).toBe(false);
    for (const [off, len, byte] of writes) {
      const b = Buffer.alloc(len, byte);
      fs.writeSync(fd, b, 0, len, off);
      await img.write(off, b);
    }
    const back = Buffer.alloc(writes[0]![1]);
    await img.read(writes[0]![0], back);
    expect(back.every((x) => x === writes[0]![2])).toBe(true);
  } finally {
    await img.close();
    fs.closeSync(fd);
  }
  const check = qemuCheck(f, 'vmdk');
  expect(check.ok, check.output).toBe(true);
  const cmp = qemuCompare(f, mirror, 'vmdk');
  expect(cmp.equal, cmp.output).toBe(true);
}

describe('vmdk streamOptimized writes', () => {
  it('qemu-img-made stream (GD in the header): appended compressed grains, partial grains COW zeros', async () => {
    const src = path.join(dir, 'src.vmdk');
    qemuImg(['create', '-f', 'vmdk', src, '8M']);
    qemuIo(src, ['write -P 0x21 0 128k'], 'vmdk');
    const f = path.join(dir, 's.vmdk');
    qemuImg(['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, f]);
    await appendAndCheck(f, [
      [MiB, 3 * 65536, 0x31],
      [4 * MiB + 1000, 5000, 0x32],
      [7 * MiB, MiB, 0x33],
    ]);
  });

  it('our own streamOptimized create, then writes; qemu-img agrees', async () => {
    const f = path.join(dir, 'ours.vmdk');
    await vmdkDriver.create!(f, {
      size: 8 * MiB,
      options: { subformat: 'streamOptimized' },
      openBacking: () => Promise.reject(new Error('none')),
      reach: reachAnywhere,
    });
    await appendAndCheck(f, [
      [0, 300_000, 0x41],
      [5 * MiB, 65536, 0x42],
    ]);
  });

  it('rewriting a written grain is refused with EROFS, and the file stays valid', async () => {
    const f = path.join(dir, 'rw.vmdk');
    await vmdkDriver.create!(f, {
      size: 4 * MiB,
      options: { subformat: 'streamOptimized' },
      openBacking: () => Promise.reject(new Error('none')),
      reach: reachAnywhere,
    });
    const img = await openImage(f, { writable: true });
    try {
      await img.write(0, Buffer.alloc(65536, 1));
      await expect(img.write(4096, Buffer.alloc(4096, 2))).rejects.toMatchObject({ code: 'EROFS' });
    } finally {
      await img.close();
    }
    expect(qemuCheck(f, 'vmdk').ok).toBe(true);
  });

  it('VMware-made stream with the GD in the footer: grains appended, footer rewritten after them', async () => {
    const src = path.join(corpusDir(), 'xo-vmdk-to-vhd/test.vmdk');
    const f = path.join(dir, 'footer.vmdk');
    // VMware marks stream extents RDONLY (honoured: see the read matrix); this copy says RW, same length.
    const bytes = fs.readFileSync(src);
    const at = bytes.indexOf('RDONLY 8192 SPARSE');
    expect(at).toBeGreaterThan(0);
    bytes.write('RW     ', at, 'latin1');
    fs.writeFileSync(f, bytes);
    const before = await hashFile(f);
    expect(before).toMatch(/^[0-9a-f]{64}$/);
    // Pick grains that are not written yet.
    const ro = await openImage(path.join(corpusDir(), 'xo-vmdk-to-vhd/test.vmdk'), { writable: true, warn: () => {} });
    expect(ro.readOnly).toBe(true);
    await ro.close();
    const img = await openImage(f, { writable: false });
    const free = (await img.map(0, img.virtualSize)).filter((x) => x.kind === 'unallocated' && x.length >= 2 * 65536);
    await img.close();
    expect(free.length).toBeGreaterThan(0);
    await appendAndCheck(f, [[free[0]!.offset, 65536 + 512, 0x51]]);
  });
});
