/**
 * create() with qemu-img's -o names: every image passes `qemu-img check`, `qemu-img info` agrees
 * with the options, and a write storm on it stays clean and equal to its mirror.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { qcow2Driver } from '../../../src/formats/qcow2';
import { parseSize } from '../../../src/formats/qcow2/create';
import { openImage } from '../../../src/image/open';
import { qemuCheck, qemuCompare, qemuImg } from '../../helpers/qemu';
import { tempDir } from './helpers';
import { storm } from './storm';
import { reachAnywhere } from '../../helpers/reach';

const dir = tempDir('create');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

const openBacking = (p: string, format?: string) => openImage(p, { writable: false, format });

async function create(
  f: string,
  size: number,
  options: Record<string, string>,
  backingFile?: string,
  backingFormat?: string,
): Promise<void> {
  await qcow2Driver.create!(f, { size, options, backingFile, backingFormat, openBacking, reach: reachAnywhere });
}

function info(f: string): Record<string, any> {
  return JSON.parse(qemuImg(['info', '--output=json', f])) as Record<string, any>;
}

describe('qcow2 create', () => {
  const cases: [string, Record<string, string>, number][] = [
    ['defaults', {}, 64 * MiB],
    ['v2', { compat: '0.10' }, 16 * MiB],
    ['v2 alias', { compat: 'v2', cluster_size: '4k' }, 16 * MiB],
    ['512-byte clusters, 1-bit refcounts', { cluster_size: '512', refcount_bits: '1' }, 4 * MiB],
    ['2M clusters, 64-bit refcounts', { cluster_size: '2M', refcount_bits: '64' }, 32 * MiB],
    ['lazy refcounts', { lazy_refcounts: 'on' }, 16 * MiB],
    ['extended L2', { extended_l2: 'on', cluster_size: '128k' }, 16 * MiB],
    ['zstd compression type', { compression_type: 'zstd', compat: '1.1' }, 16 * MiB],
    ['large L1 (512-byte clusters, 1 GiB)', { cluster_size: '512', refcount_bits: '8' }, 1024 * MiB],
    ['odd size', {}, 12345 * 512],
  ];
  cases.forEach(([name, opts, size], idx) => {
    it(name, async () => {
      const f = path.join(dir, `c${idx}.qcow2`);
      await create(f, size, opts);
      let check = qemuCheck(f);
      expect(check.ok, check.output).toBe(true);
      const i = info(f);
      expect(i['virtual-size']).toBe(size);
      expect(i['cluster-size']).toBe(parseSize(opts['cluster_size'] ?? '64k', 'cluster_size'));
      const data = i['format-specific'].data;
      expect(data.compat).toBe(opts['compat'] === '0.10' || opts['compat'] === 'v2' ? '0.10' : '1.1');
      expect(data['refcount-bits']).toBe(Number(opts['refcount_bits'] ?? 16));
      if (data.compat === '1.1') {
        expect(data['lazy-refcounts']).toBe(opts['lazy_refcounts'] === 'on');
        expect(data['extended-l2']).toBe(opts['extended_l2'] === 'on');
        expect(data['compression-type']).toBe(opts['compression_type'] ?? 'zlib');
      }
      if (size <= 64 * MiB) {
        const img = await openImage(f, { writable: true });
        const mirror = Buffer.alloc(size);
        await storm(img, mirror, { seed: 77 + idx, ops: 40, maxLen: Math.min(size, MiB) });
        await img.close();
        check = qemuCheck(f);
        expect(check.ok, check.output).toBe(true);
        fs.writeFileSync(`${f}.mirror`, mirror);
        expect(qemuCompare(f, `${f}.mirror`).equal).toBe(true);
      }
    });
  });

  it('preallocation=metadata: everything mapped, reads zeros, passes check', async () => {
    for (const opts of [{ preallocation: 'metadata' }, { preallocation: 'metadata', cluster_size: '512', compat: '0.10' }] as Array<
      Record<string, string>
    >) {
      const f = path.join(dir, `prealloc-${opts.compat ?? 'v3'}.qcow2`);
      await create(f, 8 * MiB, opts);
      const check = qemuCheck(f);
      expect(check.ok, check.output).toBe(true);
      const map = JSON.parse(qemuImg(['map', '--output=json', f])) as { data: boolean }[];
      expect(map.every((m) => m.data)).toBe(true);
      const img = await openImage(f, { writable: true });
      const b = Buffer.alloc(MiB, 1);
      await img.read(3 * MiB, b);
      expect(b.every((x) => x === 0)).toBe(true);
      const before = img.stats().driver['allocatedClusters'];
      await img.write(3 * MiB + 5, Buffer.alloc(1000, 7)); // in place: no allocation
      expect(img.stats().driver['allocatedClusters']).toBe(before);
      await img.close();
      expect(qemuCheck(f).ok).toBe(true);
    }
  });

  it('backing file (relative name, format extension; size from the backing file)', async () => {
    const base = path.join(dir, 'base.raw');
    fs.writeFileSync(base, Buffer.alloc(3 * MiB, 0xab));
    const f = path.join(dir, 'overlay.qcow2');
    await create(f, 0, {}, 'base.raw', 'raw');
    const i = info(f);
    expect(i['backing-filename']).toBe('base.raw');
    expect(i['backing-filename-format']).toBe('raw');
    expect(i['virtual-size']).toBe(3 * MiB);
    expect(qemuCheck(f).ok).toBe(true);
    const img = await openImage(f, { writable: true });
    await img.write(MiB + 100, Buffer.alloc(10, 0xcd));
    await img.close();
    const mirror = Buffer.alloc(3 * MiB, 0xab);
    mirror.fill(0xcd, MiB + 100, MiB + 110);
    fs.writeFileSync(`${f}.mirror`, mirror);
    expect(qemuCompare(f, `${f}.mirror`).equal).toBe(true);
    expect(qemuCheck(f).ok).toBe(true);
    // A v2 overlay of a qcow2 backing file also records the backing format.
    const v2 = path.join(dir, 'overlay-v2.qcow2');
    await create(v2, 4 * MiB, { compat: '0.10' }, 'overlay.qcow2', 'qcow2');
    expect(info(v2)['backing-filename-format']).toBe('qcow2');
  });

  it('rounds the size up to whole sectors like qemu-img', async () => {
    const f = path.join(dir, 'round.qcow2');
    await create(f, 1000, {});
    expect(info(f)['virtual-size']).toBe(1024);
  });

  it('refuses bad options', async () => {
    for (const o of [
      { cluster_size: '1000' },
      { compat: '2.0' },
      { refcount_bits: '3' },
      { compat: '0.10', lazy_refcounts: 'on' },
      { extended_l2: 'on', cluster_size: '4k' },
      { bogus: '1' },
    ] as Array<Record<string, string>>) {
      await expect(create(path.join(dir, `bad-${Object.values(o).join('-')}.qcow2`), MiB, o)).rejects.toMatchObject({ code: 'EINVAL' });
    }
  });
});
