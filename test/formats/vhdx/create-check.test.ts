/** create() with qemu-img's -o names (qemu-img reads and checks what we make); check() against qemu-img check. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { vhdxDriver } from '../../../src/formats/vhdx';
import * as bat from '../../../src/formats/vhdx/bat';
import { defaultBlockSize } from '../../../src/formats/vhdx/create';
import { parseRegionTable, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE } from '../../../src/formats/vhdx/region-table';
import type { OpenOptions } from '../../../src/formats/types';
import { openImage } from '../../../src/image/open';
import { qemuCheck, qemuImg, qemuIo } from '../../helpers/qemu';
import { reachAnywhere } from '../../helpers/reach';
import { createChild, rmrf, tmpDir } from './helpers';

const dir = tmpDir('create-check');
afterAll(() => rmrf(dir));
const M = 1 << 20;

const openOpts = (writable: boolean): OpenOptions => ({
  writable,
  reach: reachAnywhere,
  openBacking: (p) => openImage(p, { writable: false }),
  warn: () => {},
});

function create(name: string, size: number, options: Record<string, string> = {}): Promise<string> {
  const f = path.join(dir, name);
  return vhdxDriver.create!(f, { size, options, ...openOpts(false) }).then(() => f);
}

interface QemuInfo {
  'virtual-size': number;
  'cluster-size': number;
  format: string;
}

describe('vhdx create', () => {
  it('the default block size follows QEMU (8M up to 1 GiB, 16M up to 100 GiB, 32M beyond)', async () => {
    for (const size of [64 * M, 4096 * M, 200 * 1024 * M]) {
      const f = await create(`default-${size}.vhdx`, size);
      const q = JSON.parse(qemuImg(['info', '--output=json', f])) as QemuInfo;
      expect(q.format).toBe('vhdx');
      expect(q['virtual-size']).toBe(size);
      expect(q['cluster-size']).toBe(defaultBlockSize(size));
      const ref = path.join(dir, `qemu-${size}.vhdx`);
      qemuImg(['create', '-f', 'vhdx', ref, String(size)]);
      expect(q['cluster-size']).toBe((JSON.parse(qemuImg(['info', '--output=json', ref])) as QemuInfo)['cluster-size']);
      expect(qemuCheck(f, 'vhdx').ok).toBe(true);
    }
  });

  it('block_size, log_size, subformat=fixed, block_state_zero: qemu-img reads what qemu-io wrote through ours', async () => {
    for (const [name, o] of [
      ['bs1', { block_size: '1M', log_size: '4M' }],
      ['fixed', { subformat: 'fixed', block_size: '2M' }],
      ['nozero', { block_state_zero: 'off', block_size: '1M' }],
    ] as const) {
      const f = await create(`${name}.vhdx`, 10 * M, { ...o });
      qemuIo(f, ['write -P 0x7e 1M 2M'], 'vhdx');
      expect(qemuCheck(f, 'vhdx').ok).toBe(true);
      const img = await openImage(f, { writable: false });
      try {
        const info = await img.info();
        expect(info['cluster-size']).toBe(parseInt(o.block_size, 10) * M);
        const b = Buffer.alloc(4 * M);
        await img.read(0, b);
        expect(b.subarray(0, M).every((x) => x === 0)).toBe(true);
        expect(b.subarray(M, 3 * M).every((x) => x === 0x7e)).toBe(true);
        const dataExtents = (await img.map(0, 10 * M)).filter((e) => e.kind === 'data');
        if (name === 'fixed') expect(dataExtents.reduce((n, e) => n + e.length, 0)).toBe(10 * M);
      } finally {
        await img.close();
      }
    }
  });

  it('refuses unknown options, a bad subformat, a non-power-of-two block size', async () => {
    await expect(create('x1.vhdx', M, { cluster_size: '64k' })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(create('x2.vhdx', M, { subformat: 'differencing' })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(create('x3.vhdx', M, { block_size: '3M' })).rejects.toMatchObject({ code: 'EINVAL' });
  });

  it('a differencing child: info names the parent, backingImage is the parent', async () => {
    const parent = await create('p.vhdx', 6 * M, { block_size: '1M' });
    const child = path.join(dir, 'c.avhdx');
    await createChild(child, parent);
    const img = await openImage(child, { writable: false });
    try {
      const info = await img.info();
      expect(info['full-backing-filename']).toBe(parent);
      expect(img.backingImage?.()?.path).toBe(parent);
      expect((info['format-specific']?.data as Record<string, unknown>)['has-parent']).toBe(true);
    } finally {
      await img.close();
    }
  });
});

describe('vhdx check', () => {
  it('clean image: no corruptions; BAT entry past the end: a corruption, as qemu-img check says', async () => {
    const f = await create('chk.vhdx', 8 * M, { block_size: '1M' });
    qemuIo(f, ['write -P 1 0 2M'], 'vhdx');
    const clean = await vhdxDriver.check!(f, { ...openOpts(false), repair: false });
    expect(clean.corruptions).toBe(0);
    expect(clean.stats?.allocatedClusters).toBe(2);
    const buf = fs.readFileSync(f);
    const r = parseRegionTable('x', buf.subarray(REGION_TABLE_OFFSETS[0], REGION_TABLE_OFFSETS[0] + REGION_TABLE_SIZE), buf.length);
    if (typeof r === 'string') throw new Error(r);
    bat.setEntry(buf.subarray(r.bat.offset), 3, bat.FULLY_PRESENT, 900);
    fs.writeFileSync(f, buf);
    const bad = await vhdxDriver.check!(f, { ...openOpts(false), repair: false });
    expect(bad.corruptions).toBe(1);
    expect(bad.messages[0]).toMatch(/past the end of the file/);
    expect(qemuCheck(f, 'vhdx').ok).toBe(false);
  });

  it('a log that needs replay is a corruption; repair replays it and qemu-img check is clean after', async () => {
    const src = path.join(process.env['VDISKFS_CORPUS'] ?? '/work/shared/corpus', 'qemu-samples/iotest-dirtylog-10G-4M.vhdx.bz2');
    const f = path.join(dir, 'dirty.vhdx');
    const { execFileSync } = await import('node:child_process');
    fs.writeFileSync(f, execFileSync('bunzip2', ['-c', src], { maxBuffer: 1 << 30 }));
    const before = await vhdxDriver.check!(f, { ...openOpts(false), repair: false });
    expect(before.corruptions).toBe(1);
    expect(before.messages[0]).toMatch(/log holds/);
    const fixed = await vhdxDriver.check!(f, { ...openOpts(true), repair: true });
    expect(fixed.corruptionsFixed).toBe(1);
    const after = await vhdxDriver.check!(f, { ...openOpts(false), repair: false });
    expect(after.corruptions).toBe(0);
    expect(qemuCheck(f, 'vhdx').ok).toBe(true);
  });
});
