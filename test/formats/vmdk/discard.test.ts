/**
 * VMDK and raw discard against QEMU: zeroed-grain entries where the header allows them, zeros
 * only over allocated grains otherwise (unallocated ones stay unallocated), a parent hidden by
 * the discard, streamOptimized refused (EROFS); raw images punched (du drops, size kept).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { qemuCheck, qemuImg, qemuIo } from '../../helpers/qemu';
import { tmpDir } from './helpers';

const dir = tmpDir('discard');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;
const KiB = 1024;

interface MapRow {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}
const qemuMap = (file: string) => JSON.parse(qemuImg(['map', '--output=json', file])) as MapRow[];
const dataBytes = (file: string) =>
  qemuMap(file)
    .filter((r) => r.data)
    .reduce((n, r) => n + r.length, 0);
function convertRaw(file: string): Buffer {
  const out = `${file}.out.raw`;
  qemuImg(['convert', '-O', 'raw', file, out]);
  const b = fs.readFileSync(out);
  fs.rmSync(out);
  return b;
}

describe('vmdk discard', () => {
  it('zeroed_grain=on: whole grains become zeroed-grain entries, partial ones zeros', async () => {
    const f = path.join(dir, 'zg.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'zeroed_grain=on', f, '16M']);
    qemuIo(f, ['write -P 0x21 0 4M']);
    const img = await openImage(f, { writable: true });
    await img.discard(1 * MiB, 2 * MiB + 4 * KiB);
    await img.close();
    const want = Buffer.alloc(16 * MiB);
    want.fill(0x21, 0, 4 * MiB);
    want.fill(0, 1 * MiB, 3 * MiB + 4 * KiB);
    expect(qemuCheck(f, 'vmdk').ok).toBe(true);
    expect(convertRaw(f).equals(want)).toBe(true);
    const zeroed = qemuMap(f)
      .filter((r) => r.zero && !r.data)
      .reduce((n, r) => n + r.length, 0);
    expect(zeroed).toBeGreaterThanOrEqual(2 * MiB);
  });

  it('without the flag: zeros over allocated grains only; unallocated grains stay unallocated', async () => {
    const f = path.join(dir, 'plain.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', f, '16M']);
    qemuIo(f, ['write -P 0x22 0 1M']);
    const sizeBefore = fs.statSync(f).size;
    const img = await openImage(f, { writable: true });
    await img.discard(512 * KiB, 8 * MiB);
    await img.close();
    const want = Buffer.alloc(16 * MiB);
    want.fill(0x22, 0, 512 * KiB);
    expect(qemuCheck(f, 'vmdk').ok).toBe(true);
    expect(convertRaw(f).equals(want)).toBe(true);
    expect(fs.statSync(f).size).toBe(sizeBefore); // nothing allocated for the empty part
    expect(dataBytes(f)).toBe(1 * MiB);
  });

  it('over a parent: the discarded range reads zeros, not the parent', async () => {
    const base = path.join(dir, 'base.vmdk');
    const child = path.join(dir, 'child.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', base, '4M']);
    qemuIo(base, ['write -P 0x23 0 4M']);
    qemuImg(['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', child]);
    const img = await openImage(child, { writable: true });
    await img.discard(1 * MiB, 1 * MiB);
    await img.close();
    const want = Buffer.alloc(4 * MiB, 0x23);
    want.fill(0, 1 * MiB, 2 * MiB);
    expect(convertRaw(child).equals(want)).toBe(true);
  });

  it('streamOptimized: EROFS', async () => {
    const src = path.join(dir, 'src.raw');
    const f = path.join(dir, 'stream.vmdk');
    fs.writeFileSync(src, Buffer.alloc(2 * MiB, 0x24));
    qemuImg(['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, f]);
    const img = await openImage(f, { writable: true });
    try {
      await expect(img.discard(0, 1 * MiB)).rejects.toMatchObject({ code: 'EROFS' });
    } finally {
      await img.close();
    }
  });
});

describe('raw discard', () => {
  it('punches the range: reads zeros, du drops, the size stays', async () => {
    const f = path.join(dir, 'disk.img');
    fs.writeFileSync(f, Buffer.alloc(16 * MiB, 0x25));
    const before = fs.statSync(f).blocks * 512;
    const img = await openImage(f, { writable: true, format: 'raw' });
    await img.discard(4 * MiB, 8 * MiB);
    await img.close();
    const want = Buffer.alloc(16 * MiB, 0x25);
    want.fill(0, 4 * MiB, 12 * MiB);
    expect(fs.readFileSync(f).equals(want)).toBe(true);
    expect(fs.statSync(f).size).toBe(16 * MiB);
    expect(before - fs.statSync(f).blocks * 512).toBeGreaterThanOrEqual(8 * MiB);
  });
});
