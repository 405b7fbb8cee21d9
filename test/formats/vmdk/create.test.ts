import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { vmdkDriver } from '../../../src/formats/vmdk/index';
import { Descriptor } from '../../../src/formats/vmdk/descriptor';
import type { CreateOptions } from '../../../src/formats/types';
import { qemuCheck, qemuCompare, qemuImg, qemuIo, qemuRaw, sha256File } from '../../helpers/qemu';
import { hashFile, tmpDir } from './helpers';
import { reachAnywhere } from '../../helpers/reach';

/** create() with qemu-img's -o names; images pass qemu-img check and read the same in qemu-img; info(); check(). */
const dir = tmpDir('create');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

const openBacking = (p: string) => openImage(p, { writable: false });
function create(name: string, size: number, options: Record<string, string> = {}, extra: Partial<CreateOptions> = {}): Promise<string> {
  const f = path.join(dir, name);
  return vmdkDriver.create!(f, { size, options, openBacking, reach: reachAnywhere, ...extra }).then(() => f);
}
function qemuInfo(f: string): Record<string, any> {
  return JSON.parse(qemuImg(['info', '--output=json', f]));
}

describe('vmdk create', () => {
  for (const sub of ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized']) {
    it(`subformat=${sub}: qemu-img check clean, info agrees, qemu-io data reads back the same`, async () => {
      const size = sub.startsWith('twoGb') ? 2 * 1024 * MiB + 8 * MiB : 24 * MiB;
      const f = await create(`${sub}.vmdk`, size, { subformat: sub, adapter_type: 'lsilogic', hwversion: '6' });
      expect(qemuCheck(f, 'vmdk').ok).toBe(true);
      const q = qemuInfo(f);
      expect(q['virtual-size']).toBe(size);
      expect(q['format-specific'].data['create-type']).toBe(sub);
      const img = await openImage(f, { writable: false });
      try {
        const info = await img.info();
        const data = info['format-specific']!.data as Record<string, any>;
        expect(info['virtual-size']).toBe(size);
        expect(data['cid']).toBe(q['format-specific'].data.cid);
        expect(data['parent-cid']).toBe(0xffffffff);
        expect(data['create-type']).toBe(sub);
        expect(data['extents'].length).toBe(q['format-specific'].data.extents.length);
        expect(data['extents'].map((e: any) => e['virtual-size'])).toEqual(
          q['format-specific'].data.extents.map((e: any) => e['virtual-size']),
        );
        if (!sub.endsWith('Flat')) expect(info['cluster-size']).toBe(65536);
      } finally {
        await img.close();
      }
      const desc = sub === 'monolithicSparse' || sub === 'streamOptimized' ? '' : fs.readFileSync(f, 'latin1');
      if (desc) {
        expect(desc).toMatch(/ddb.adapterType = "lsilogic"/);
        expect(desc).toMatch(/ddb.virtualHWVersion = "6"/);
        expect(desc).toMatch(/ddb.geometry.heads = "255"/);
      }
      if (sub !== 'streamOptimized') {
        // qemu-io writes into our image; both readers agree.
        qemuIo(f, ['write -P 0x6b 1M 200k', `write -P 0x6c ${size - 65536} 65536`], 'vmdk');
        expect(qemuCheck(f, 'vmdk').ok).toBe(true);
        if (size < 100 * MiB) {
          const raw = qemuRaw(f, `${f}.raw`);
          const want = sha256File(raw);
          fs.rmSync(raw);
          expect(await hashFile(f)).toBe(want);
        } else {
          // 2 GiB+: check the written ranges and their edges instead of hashing every zero.
          const r = await openImage(f, { writable: false });
          try {
            const a = Buffer.alloc(200 * 1024 + 8192);
            await r.read(MiB - 4096, a);
            expect(
              a.subarray(0, 4096).every((x) => x === 0) &&
                a.subarray(4096, 4096 + 200 * 1024).every((x) => x === 0x6b) &&
                a.subarray(-4096).every((x) => x === 0),
            ).toBe(true);
            const b = Buffer.alloc(65536 + 4096);
            await r.read(size - b.length, b);
            expect(b.subarray(0, 4096).every((x) => x === 0) && b.subarray(4096).every((x) => x === 0x6c)).toBe(true);
          } finally {
            await r.close();
          }
        }
      }
    }, 120_000);
  }

  it('zeroed_grain=on: version 2 header with the flag; writeZeroes leaves zeroed-grain entries', async () => {
    const f = await create('zg.vmdk', 8 * MiB, { zeroed_grain: 'on' });
    const head = fs.readFileSync(f).subarray(0, 16);
    expect(head.readUInt32LE(4)).toBe(2);
    expect(head.readUInt32LE(8) & 4).toBe(4);
    const img = await openImage(f, { writable: true });
    try {
      await img.write(0, Buffer.alloc(2 * MiB, 0x99));
      await img.writeZeroes(512 * 1024, MiB);
      expect(await img.map(512 * 1024, MiB)).toEqual([{ offset: 512 * 1024, length: MiB, kind: 'zero' }]);
      expect(img.stats().driver['zeroGrains']).toBe(16);
    } finally {
      await img.close();
    }
    expect(qemuCheck(f, 'vmdk').ok).toBe(true);
    const m = Buffer.alloc(8 * MiB);
    m.fill(0x99, 0, 512 * 1024);
    m.fill(0x99, 512 * 1024 + MiB, 2 * MiB);
    fs.writeFileSync(`${f}.mirror`, m);
    expect(qemuCompare(f, `${f}.mirror`, 'vmdk').equal).toBe(true);
  });

  it('-b parent: a delta disk with parentCID and parentFileNameHint that qemu-img follows', async () => {
    const parent = await create('parent.vmdk', 8 * MiB);
    qemuIo(parent, ['write -P 0x12 0 8M'], 'vmdk');
    const child = await create('child.vmdk', 0, {}, { backingFile: 'parent.vmdk' });
    const d = Descriptor.parse(
      fs
        .readFileSync(child)
        .subarray(512, 512 + 10240)
        .toString('latin1'),
    );
    expect(d.parentFileNameHint).toBe('parent.vmdk');
    const p = await openImage(parent, { writable: false });
    expect(d.parentCid).toBe((p as any).cid);
    await p.close();
    expect(qemuInfo(child)['backing-filename']).toBe('parent.vmdk');
    const img = await openImage(child, { writable: true });
    try {
      expect(img.virtualSize).toBe(8 * MiB);
      await img.write(100, Buffer.alloc(1000, 0x34));
      const info = await img.info();
      expect(info['full-backing-filename']).toBe(parent);
    } finally {
      await img.close();
    }
    expect(qemuCheck(child, 'vmdk').ok).toBe(true);
    const m = Buffer.alloc(8 * MiB, 0x12);
    m.fill(0x34, 100, 1100);
    fs.writeFileSync(`${child}.mirror`, m);
    expect(qemuCompare(child, `${child}.mirror`, 'vmdk').equal).toBe(true);
  });

  it('describe lists the extent files a descriptor names and resolves the parent', async () => {
    const split = await create('aux-split.vmdk', 3 * 1024 * MiB, { subformat: 'twoGbMaxExtentSparse' });
    const head = Buffer.alloc(0);
    expect((await vmdkDriver.describe!(split, head)).auxiliaryFiles).toEqual([
      path.join(dir, 'aux-split-s001.vmdk'),
      path.join(dir, 'aux-split-s002.vmdk'),
    ]);
    const flat = await create('aux-flat.vmdk', MiB, { subformat: 'monolithicFlat' });
    expect((await vmdkDriver.describe!(flat, head)).auxiliaryFiles).toEqual([path.join(dir, 'aux-flat-flat.vmdk')]);
    const mono = await create('aux-mono.vmdk', MiB);
    expect((await vmdkDriver.describe!(mono, head)).auxiliaryFiles).toEqual([]);
    expect((await vmdkDriver.describe!(mono, head)).backingFile).toBeUndefined();
    const child = await create('aux-child.vmdk', 0, {}, { backingFile: 'aux-mono.vmdk' });
    expect((await vmdkDriver.describe!(child, head)).backingFile).toBe(mono);
  });

  it('bad options are refused', async () => {
    await expect(create('bad1.vmdk', MiB, { subformat: 'vmfs' })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(create('bad2.vmdk', MiB, { adapter_type: 'scsi' })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(create('bad3.vmdk', MiB, { cluster_size: '4096' })).rejects.toMatchObject({ code: 'EINVAL' });
  });
});

describe('vmdk CID / parentCID', () => {
  it('the first write gives a new CID (only that line changes); a child made before it opens read-only with a warning', async () => {
    const parent = path.join(dir, 'cp.vmdk');
    qemuImg(['create', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', parent, '4M']);
    const child = path.join(dir, 'cc.vmdk');
    qemuImg(['create', '-f', 'vmdk', '-b', 'cp.vmdk', '-F', 'vmdk', child]);
    const before = fs.readFileSync(parent, 'latin1');
    const w1: string[] = [];
    const ok = await openImage(child, { writable: true, warn: (m) => w1.push(m) });
    expect(ok.readOnly).toBe(false);
    await ok.close();
    expect(w1).toEqual([]);
    const img = await openImage(parent, { writable: true });
    await img.write(0, Buffer.alloc(512, 1));
    await img.close();
    const after = fs.readFileSync(parent, 'latin1');
    expect(after).not.toBe(before);
    const diff = after.split('\n').filter((l, i) => l !== before.split('\n')[i]);
    expect(diff).toHaveLength(1);
    expect(diff[0]).toMatch(/^CID=[0-9a-f]{8}$/);
    const warnings: string[] = [];
    const c = await openImage(child, { writable: true, warn: (m) => warnings.push(m) });
    try {
      expect(c.readOnly).toBe(true);
      expect(warnings.join('\n')).toMatch(/parentCID/);
      await expect(c.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EROFS' });
    } finally {
      await c.close();
    }
  });
});

describe('vmdk check', () => {
  it('clean on a written image; reports grains past EOF, shared grains, leaks', async () => {
    const f = path.join(dir, 'chk.vmdk');
    qemuImg(['create', '-f', 'vmdk', f, '8M']);
    qemuIo(f, ['write -P 1 0 256k'], 'vmdk');
    const opts = { writable: false, repair: false, warn: () => {}, openBacking, reach: reachAnywhere };
    expect(await vmdkDriver.check!(f, opts)).toMatchObject({ errors: 0, corruptions: 0, leaks: 0 });
    const buf = fs.readFileSync(f);
    const gd = Number(buf.readBigUInt64LE(56));
    const gt = buf.readUInt32LE(gd * 512);
    const e0 = buf.readUInt32LE(gt * 512);
    buf.writeUInt32LE(e0, gt * 512 + 4); // grain 1 -> grain 0's data (shared)
    buf.writeUInt32LE(0x00ffffff, gt * 512 + 8); // grain 2 -> past EOF
    fs.writeFileSync(f, buf);
    const r = await vmdkDriver.check!(f, opts);
    expect(r.corruptions).toBeGreaterThanOrEqual(2);
    expect(r.errors).toBeGreaterThanOrEqual(1); // primary and redundant tables now differ
    expect(r.leaks).toBeGreaterThanOrEqual(1); // grains 1 and 2's old data is unreferenced
    expect(r.messages.join('\n')).toMatch(/past the end/);
  });
});
