import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import * as hdr from '../../../src/formats/vmdk/sparse-header';
import { qemuImg, qemuIo, qemuRaw, sha256File } from '../../helpers/qemu';
import { hashFile, tmpDir } from './helpers';

/** Every hosted variant made by qemu-img/qemu-io (or by hand where qemu-img cannot): raw view == qemu-img convert -O raw. */
const dir = tmpDir('read');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function expectSameAsQemu(file: string): Promise<void> {
  const raw = qemuRaw(file, path.join(dir, `${path.basename(file)}.raw`));
  const want = sha256File(raw);
  fs.rmSync(raw);
  return hashFile(file).then((got) => expect(got).toBe(want));
}

function make(name: string, size: string, opts: string[] = [], writes: string[] = []): string {
  const f = path.join(dir, name);
  qemuImg(['create', '-f', 'vmdk', ...(opts.length ? ['-o', opts.join(',')] : []), f, size]);
  if (writes.length) qemuIo(f, writes, 'vmdk');
  return f;
}

const pattern = ['write -P 0x11 0 100k', 'write -P 0x22 5M 3k', 'write -P 0x33 8387584 1024', 'write -P 0x44 1M 1M'];

describe('vmdk read matrix (qemu-img is the oracle)', () => {
  it('monolithicSparse', async () => {
    await expectSameAsQemu(make('ms.vmdk', '8M', [], pattern));
  });

  it('monolithicSparse with an odd size (capacity not a multiple of the grain)', async () => {
    await expectSameAsQemu(make('odd.vmdk', '1000K', [], ['write -P 0x5a 900k 100k']));
  });

  it('monolithicFlat', async () => {
    await expectSameAsQemu(make('mf.vmdk', '8M', ['subformat=monolithicFlat'], pattern));
  });

  it('twoGbMaxExtentSparse across the extent boundary', async () => {
    const f = make(
      'tgs.vmdk',
      '3G',
      ['subformat=twoGbMaxExtentSparse'],
      ['write -P 0x66 2047M 2M', 'write -P 0x77 0 64k', 'write -P 0x78 3071M 1M'],
    );
    const img = await openImage(f, { writable: false });
    try {
      const b = Buffer.alloc(2 << 20);
      await img.read(2047 * 1024 * 1024, b);
      expect(b.every((x) => x === 0x66)).toBe(true);
      const m = await img.map(0, img.virtualSize);
      expect(m.filter((x) => x.kind === 'data').length).toBeGreaterThanOrEqual(3);
    } finally {
      await img.close();
    }
    await expectSameAsQemu(f);
  }, 120_000);

  it('twoGbMaxExtentFlat across the extent boundary', async () => {
    const f = make('tgf.vmdk', '2080M', ['subformat=twoGbMaxExtentFlat'], ['write -P 0x66 2047M 2M']);
    const img = await openImage(f, { writable: false });
    try {
      const b = Buffer.alloc(2 << 20);
      await img.read(2047 * 1024 * 1024, b);
      expect(b.every((x) => x === 0x66)).toBe(true);
      const tail = Buffer.alloc(1 << 20);
      await img.read(2079 * 1024 * 1024, tail);
      expect(tail.every((x) => x === 0)).toBe(true);
    } finally {
      await img.close();
    }
  }, 120_000);

  it('streamOptimized (qemu-img convert -o subformat=streamOptimized)', async () => {
    const src = make('so-src.vmdk', '8M', [], [...pattern, 'write -P 0x99 3M 200k']);
    const f = path.join(dir, 'so.vmdk');
    qemuImg(['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, f]);
    await expectSameAsQemu(f);
  });

  it('delta disk (-b parent): unallocated grains read from the parent', async () => {
    const parent = make('base.vmdk', '8M', [], pattern);
    const child = path.join(dir, 'child.vmdk');
    qemuImg(['create', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', child]);
    qemuIo(child, ['write -P 0xcc 70k 10k', 'write -P 0xdd 6M 64k'], 'vmdk');
    await expectSameAsQemu(child);
    const img = await openImage(child, { writable: false });
    try {
      const m = await img.map(0, img.virtualSize);
      expect(m.some((x) => x.kind === 'backing')).toBe(true);
      expect((await (await import('../../../src/formats/vmdk/index')).vmdkDriver.describe!(child, Buffer.alloc(0))).backingFile).toBe(
        parent,
      );
    } finally {
      await img.close();
    }
  });

  it('zeroed grains (zeroed_grain=on + write -z), also hiding parent data', async () => {
    const base = make('zbase.vmdk', '4M', [], ['write -P 0x55 0 4M']);
    const z = make('z.vmdk', '4M', ['zeroed_grain=on'], ['write -P 0x11 0 1M', 'write -z 256k 256k', 'write -z 2M 128k']);
    await expectSameAsQemu(z);
    const zc = path.join(dir, 'zc.vmdk');
    qemuImg(['create', '-f', 'vmdk', '-o', 'zeroed_grain=on', '-b', path.basename(base), '-F', 'vmdk', zc]);
    qemuIo(zc, ['write -z 1M 512k', 'write -P 0x12 3M 64k'], 'vmdk');
    await expectSameAsQemu(zc);
    const img = await openImage(zc, { writable: false });
    try {
      const m = await img.map(1 << 20, 512 << 10);
      expect(m).toEqual([{ offset: 1 << 20, length: 512 << 10, kind: 'zero' }]);
    } finally {
      await img.close();
    }
  });

  it('CRLF descriptor, FLAT extent with an offset, SPARSE extent (qemu-img reads it too)', async () => {
    const data = path.join(dir, 'multi-data.bin');
    const buf = Buffer.alloc(3 << 20);
    for (let i = 0; i < buf.length; i++) buf[i] = (i * 7 + (i >> 12)) & 0xff;
    fs.writeFileSync(data, buf);
    make('multi-s.vmdk', '1M', [], ['write -P 0x31 64k 128k']);
    const lines = (extra: string[]) =>
      [
        '# Disk DescriptorFile',
        'version=1',
        'CID=12345678',
        'parentCID=ffffffff',
        'createType="twoGbMaxExtentSparse"',
        '',
        '# Extent description',
        'RW 2048 FLAT "multi-data.bin" 2048',
        ...extra,
        'RW 2048 SPARSE "multi-s.vmdk"',
        '',
        '#DDB',
        'ddb.adapterType = "ide"',
        '',
      ].join('\r\n');
    const f = path.join(dir, 'multi.vmdk');
    fs.writeFileSync(f, lines([]));
    await expectSameAsQemu(f);

    // ZERO and RDONLY extents: qemu-img 7.2 skips such lines, so the expected bytes are built here.
    const g = path.join(dir, 'multi2.vmdk');
    fs.writeFileSync(g, lines(['RW 1024 ZERO']).replace('\r\n\r\n#DDB', '\r\nRDONLY 1024 FLAT "multi-data.bin" 0\r\n\r\n#DDB'));
    const sparse = Buffer.alloc(1 << 20);
    sparse.fill(0x31, 64 << 10, 192 << 10);
    const want = Buffer.concat([buf.subarray(1 << 20, 2 << 20), Buffer.alloc(512 << 10), sparse, buf.subarray(0, 512 << 10)]);
    const warnings: string[] = [];
    const img = await openImage(g, { writable: true, warn: (m) => warnings.push(m) });
    try {
      expect(img.readOnly).toBe(true);
      expect(warnings.join('\n')).toMatch(/RDONLY/);
      expect(img.virtualSize).toBe(want.length);
      const got = Buffer.alloc(want.length);
      await img.read(0, got);
      expect(got.equals(want)).toBe(true);
      await expect(img.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EROFS' });
    } finally {
      await img.close();
    }
  });

  it('NOACCESS extents are not read', async () => {
    fs.writeFileSync(path.join(dir, 'na-data.bin'), Buffer.alloc(1 << 20, 1));
    const f = path.join(dir, 'na.vmdk');
    fs.writeFileSync(
      f,
      '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nNOACCESS 2048 FLAT "na-data.bin" 0\n',
    );
    const img = await openImage(f, { writable: false });
    try {
      await expect(img.read(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EIO' });
    } finally {
      await img.close();
    }
  });

  it('hand-made sparse extent: 8 KiB grains, 128-entry tables, GD entries of 0, redundant GD', async () => {
    const f = path.join(dir, 'hand.vmdk');
    const capacity = 4096; // sectors = 2 MiB
    const grainSectors = 16;
    const gtes = 128;
    const h: hdr.SparseHeader = {
      version: 1,
      flags: hdr.FLAG_NL_DETECT | hdr.FLAG_RGD,
      capacity,
      grainSize: grainSectors,
      descriptorOffset: 1,
      descriptorSize: 4,
      numGTEsPerGT: gtes,
      rgdOffset: 5,
      gdOffset: 6,
      overHead: 16,
      uncleanShutdown: 0,
      compressAlgorithm: 0,
    };
    const file = Buffer.alloc(16 * 512 + 3 * 8192);
    hdr.serialize(h).copy(file, 0);
    file.write(
      '# Disk DescriptorFile\nversion=1\nCID=abcdef01\nparentCID=ffffffff\ncreateType="monolithicSparse"\nRW 4096 SPARSE "hand.vmdk"\n',
      512,
      'latin1',
    );
    // table 0 at sector 7 (primary) and 8 (redundant); table 1 absent (GD entry 0)
    file.writeUInt32LE(8, 5 * 512);
    file.writeUInt32LE(7, 6 * 512);
    const grainAt = [16, 32, 48];
    const slots = [3, 4, 100];
    slots.forEach((slot, i) => {
      file.writeUInt32LE(grainAt[i]!, 7 * 512 + slot * 4);
      file.writeUInt32LE(grainAt[i]!, 8 * 512 + slot * 4);
      file.fill(0x40 + i, grainAt[i]! * 512, grainAt[i]! * 512 + 8192);
    });
    fs.writeFileSync(f, file);
    await expectSameAsQemu(f);
  });

  it('COWD (vmfsSparse) delta extent named by a VMFSSPARSE line: read-only, reads as qemu-img does', async () => {
    const ext = path.join(dir, 'cowd-delta.vmdk');
    const gdSector = 4;
    const gtSector = 5; // one 4096-entry table = 32 sectors
    const firstGrain = gtSector + 32;
    const buf = Buffer.alloc((firstGrain + 3 * 16) * 512);
    buf.write('COWD', 0, 'latin1');
    [1, 3, 4096, 16, gdSector, 1, buf.length / 512].forEach((v, i) => buf.writeUInt32LE(v, 4 + i * 4));
    buf.writeUInt32LE(gtSector, gdSector * 512);
    [
      [2, 0x61],
      [7, 0x62],
      [255, 0x63],
    ].forEach(([slot, byte], i) => {
      buf.writeUInt32LE(firstGrain + i * 16, gtSector * 512 + slot! * 4);
      buf.fill(byte!, (firstGrain + i * 16) * 512, (firstGrain + (i + 1) * 16) * 512);
    });
    fs.writeFileSync(ext, buf);
    const f = path.join(dir, 'cowd.vmdk');
    fs.writeFileSync(
      f,
      '# Disk DescriptorFile\nversion=1\nCID=11112222\nparentCID=ffffffff\ncreateType="vmfsSparse"\n\n# Extent description\nRW 4096 VMFSSPARSE "cowd-delta.vmdk"\n',
    );
    await expectSameAsQemu(f);
    const warnings: string[] = [];
    const img = await openImage(f, { writable: true, warn: (m) => warnings.push(m) });
    try {
      expect(img.readOnly).toBe(true);
      expect(warnings.join('\n')).toMatch(/COWD/);
      const g = Buffer.alloc(8192);
      await img.read(255 * 8192, g);
      expect(g.every((x) => x === 0x63)).toBe(true);
    } finally {
      await img.close();
    }
  });
});
