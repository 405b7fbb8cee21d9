/**
 * Read matrix: images made by qemu-img/qemu-io in every shape the driver must read; each raw
 * view must equal `qemu-img convert -O raw` byte for byte.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { qemuCheck, qemuImg, qemuIo } from '../../helpers/qemu';
import { expectSameAsQemu, open, tempDir } from './helpers';

const dir = tempDir('read');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

/** A pattern of writes that covers aligned, unaligned, cross-cluster and zero writes. */
function fill(file: string, size: number, fmt = 'qcow2'): void {
  const cmds = [
    `write -P 0x11 0 ${Math.min(size, 192 * 1024)}`,
    `write -P 0x22 ${size / 2 - 1000} 5000`,
    `write -P 0x33 ${size - 4096} 4096`,
    `write -P 0x44 65535 3`,
    `write -z ${size / 4} 131072`,
    `write -P 0x55 ${size / 4 + 4096} 4096`,
  ];
  qemuIo(file, cmds, fmt);
}

function make(name: string, opts: string, size = 8 * MiB, doFill = true): string {
  const f = path.join(dir, name);
  qemuImg(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), f, String(size)]);
  if (doFill) fill(f, size);
  return f;
}

describe('qcow2 read matrix (oracle: qemu-img convert -O raw)', () => {
  const variants: [string, string, number?][] = [
    ['default-v3', ''],
    ['cluster-512', 'cluster_size=512', 2 * MiB],
    ['cluster-4k', 'cluster_size=4096'],
    ['cluster-2m', 'cluster_size=2M', 16 * MiB],
    ['v2', 'compat=0.10'],
    ['v2-512', 'compat=0.10,cluster_size=512', 2 * MiB],
    ['lazy', 'lazy_refcounts=on'],
    ['extl2', 'extended_l2=on'],
    ['extl2-2m', 'extended_l2=on,cluster_size=2M', 16 * MiB],
    ...[1, 2, 4, 8, 32, 64].map((b) => [`refcount-${b}`, `refcount_bits=${b}`] as [string, string]),
    ['odd-size', '', 8 * MiB + 12345 * 0], // replaced below with an odd size
  ];
  for (const [name, opts, size] of variants) {
    it(name, async () => {
      const f = make(`${name}.qcow2`, opts, size ?? 8 * MiB);
      await expectSameAsQemu(f);
    });
  }

  it('virtual size not a cluster multiple', async () => {
    const f = path.join(dir, 'odd.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '102400']);
    qemuIo(f, ['write -P 0x66 0 102400']);
    await expectSameAsQemu(f);
  });

  it('zero clusters of both kinds (write -z with and without unmap) and extended-L2 zero subclusters', async () => {
    for (const opts of ['', 'extended_l2=on']) {
      const f = path.join(dir, `zero-${opts ? 'ext' : 'std'}.qcow2`);
      const b = path.join(dir, `zero-base-${opts ? 'ext' : 'std'}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', b, '4M']);
      qemuIo(b, ['write -P 0x77 0 4M']);
      qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', b, ...(opts ? ['-o', opts] : []), f]);
      qemuIo(f, [
        'write -P 0x12 0 1M',
        'write -z 65536 65536',
        'write -z -u 262144 131072',
        'write -z 2M 65536',
        'write -z 3M 8192',
        'write -P 0x13 3170304 1000',
      ]);
      const m = qemuImg(['map', '--output=json', f]);
      expect(m).toContain('"zero": true');
      await expectSameAsQemu(f);
    }
  });

  it('extended L2 with partially allocated clusters over a backing file', async () => {
    const b = path.join(dir, 'ext-base.raw');
    fs.writeFileSync(b, Buffer.alloc(4 * MiB, 0x5a));
    const f = path.join(dir, 'ext-sub.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', b, '-o', 'extended_l2=on,cluster_size=128k', f]);
    qemuIo(f, ['write -P 0x01 4096 4096', 'write -P 0x02 200000 3', 'write -P 0x03 1M 12288', 'write -z 1200000 8192']);
    await expectSameAsQemu(f);
  });

  it('backing chain qcow2 -> qcow2 -> raw, relative names, backing smaller than the overlay', async () => {
    const sub = path.join(dir, 'chain');
    fs.mkdirSync(sub);
    fs.writeFileSync(path.join(sub, 'base.raw'), Buffer.alloc(3 * MiB, 0xa1));
    qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', 'base.raw', path.join(sub, 'mid.qcow2'), '6M']);
    qemuIo(path.join(sub, 'mid.qcow2'), ['write -P 0xb2 1M 1M', 'write -P 0xb3 5M 4096']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', 'mid.qcow2', path.join(sub, 'top.qcow2'), '8M']);
    qemuIo(path.join(sub, 'top.qcow2'), ['write -P 0xc3 1536k 4096', 'write -P 0xc4 7M 100']);
    await expectSameAsQemu(path.join(sub, 'top.qcow2'));
    const img = await open(path.join(sub, 'top.qcow2'));
    const info = await img.info();
    expect(info['backing-filename']).toBe('mid.qcow2');
    expect(info['backing-filename-format']).toBe('qcow2');
    const m = await img.map(0, img.virtualSize);
    expect(m.some((e) => e.kind === 'backing')).toBe(true);
    expect(m.some((e) => e.kind === 'data')).toBe(true);
    await img.close();
  });

  for (const ct of ['zlib', 'zstd']) {
    it(`compressed clusters (${ct})`, async () => {
      const src = make(`csrc-${ct}.qcow2`, '', 4 * MiB);
      const f = path.join(dir, `compressed-${ct}.qcow2`);
      qemuImg(['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${ct}`, src, f]);
      await expectSameAsQemu(f);
    });
  }

  it('compressed v2 with 512-byte and 2M clusters', async () => {
    for (const cs of ['512', '2M']) {
      const src = make(`csrc2-${cs}.qcow2`, '', 4 * MiB);
      const f = path.join(dir, `compressed-v2-${cs}.qcow2`);
      qemuImg(['convert', '-c', '-O', 'qcow2', '-o', `compat=0.10,cluster_size=${cs}`, src, f]);
      await expectSameAsQemu(f);
    }
  });

  it('internal snapshots: active layer, each snapshot read-only, listSnapshots', async () => {
    const f = make('snap.qcow2', '', 4 * MiB);
    qemuImg(['snapshot', '-c', 'first', f]);
    qemuIo(f, ['write -P 0xee 0 1M', 'write -z 2M 64k']);
    qemuImg(['snapshot', '-c', 'second snap', f]);
    qemuIo(f, ['write -P 0xdd 512k 4096']);
    await expectSameAsQemu(f);
    for (const s of ['first', 'second snap']) {
      const out = path.join(dir, `snap-${s.replace(' ', '_')}.raw`);
      qemuImg(['convert', '-O', 'raw', '-l', `snapshot.name=${s}`, f, out]);
      await expectSameAsQemu(f, { snapshot: s }, out);
    }
    const { qcow2Driver } = await import('../../../src/formats/qcow2');
    expect((await qcow2Driver.describe!(f, Buffer.alloc(0))).snapshots).toEqual(['first', 'second snap']);
    const img = await open(f, { snapshot: 'first', writable: true });
    expect(img.readOnly).toBe(true);
    await expect(img.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EROFS' });
    await img.close();
    const active = await open(f);
    const info = await active.info();
    expect(info.snapshots?.map((s) => s.name)).toEqual(['first', 'second snap']);
    await active.close();
  });

  it('external data file', async () => {
    const f = path.join(dir, 'ext-data.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${path.join(dir, 'ext-data.bin')}`, f, '4M']);
    qemuIo(f, ['write -P 0x42 0 1M', 'write -P 0x43 3M 5000']);
    await expectSameAsQemu(f);
  });

  it('info() uses qemu-img info field names', async () => {
    const f = make('info.qcow2', 'lazy_refcounts=on,refcount_bits=8', 4 * MiB, false);
    const img = await open(f);
    const info = await img.info();
    const q = JSON.parse(qemuImg(['info', '--output=json', f])) as Record<string, unknown>;
    expect(info['virtual-size']).toBe(q['virtual-size']);
    expect(info['cluster-size']).toBe(q['cluster-size']);
    expect(info['dirty-flag']).toBe(q['dirty-flag']);
    expect(info['format-specific']).toEqual(q['format-specific']);
    await img.close();
  });
});

describe('qcow2 driver helpers', () => {
  it('describe: the backing file resolved relative to the image, the external data file as an auxiliary file', async () => {
    const { qcow2Driver } = await import('../../../src/formats/qcow2');
    const sub = path.join(dir, 'aux');
    fs.mkdirSync(sub);
    fs.writeFileSync(path.join(sub, 'b.raw'), Buffer.alloc(MiB));
    const top = path.join(sub, 'top.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', 'b.raw', top]);
    const head = fs.readFileSync(top).subarray(0, 4096);
    expect(qcow2Driver.probe(head, top)).toBe(true);
    expect((await qcow2Driver.describe!(top, head)).backingFile).toBe(path.join(sub, 'b.raw'));
    expect((await qcow2Driver.describe!(top, head)).auxiliaryFiles).toEqual([]);
    const df = path.join(sub, 'df.qcow2');
    // A relative data file name, created from the image's folder (qemu-img resolves it against its cwd).
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'data_file=df.bin', 'df.qcow2', '1M'], { cwd: sub });
    const dfHead = fs.readFileSync(df).subarray(0, 4096);
    expect((await qcow2Driver.describe!(df, dfHead)).auxiliaryFiles).toEqual([path.join(sub, 'df.bin')]);
    expect((await qcow2Driver.describe!(df, dfHead)).backingFile).toBeUndefined();
  });
});

describe('qcow2 map()', () => {
  it('agrees with qemu-img map: data (host offsets), zero, backing, unallocated', async () => {
    const sub = path.join(dir, 'map');
    fs.mkdirSync(sub);
    fs.writeFileSync(path.join(sub, 'base.raw'), Buffer.alloc(2 * MiB, 1));
    const top = path.join(sub, 'top.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', 'base.raw', top, '4M']);
    qemuIo(top, ['write -P 7 64k 128k', 'write -z 1M 64k', 'write -P 8 3M 64k']);
    const solo = path.join(sub, 'solo.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', solo, '4M']);
    qemuIo(solo, ['write -P 7 0 64k']);
    for (const f of [top, solo]) {
      const q = JSON.parse(qemuImg(['map', '--output=json', f])) as {
        start: number;
        length: number;
        depth: number;
        zero: boolean;
        data: boolean;
        offset?: number;
      }[];
      const img = await open(f);
      const ours = await img.map(0, img.virtualSize);
      await img.close();
      if (f === top) {
        expect(ours.find((e) => e.offset <= MiB && MiB < e.offset + e.length)!.kind).toBe('zero');
        expect(ours.find((e) => e.offset <= 3 * MiB - 1 && 3 * MiB - 1 < e.offset + e.length)!.kind).toBe('unallocated'); // past the backing file
      }
      // Compare byte by byte classification at 64 KiB granularity.
      for (let off = 0; off < 4 * MiB; off += 65536) {
        const qe = q.find((e) => e.start <= off && off < e.start + e.length)!;
        const oe = ours.find((e) => e.offset <= off && off < e.offset + e.length)!;
        const qKind = qe.depth > 0 ? 'backing' : qe.data ? 'data' : 'zero-or-unallocated';
        if (qKind === 'zero-or-unallocated') expect(['zero', 'unallocated']).toContain(oe.kind);
        else expect(oe.kind, `${f} at ${off}`).toBe(qKind);
        if (oe.kind === 'data') expect(oe.hostOffset! + (off - oe.offset)).toBe(qe.offset! + (off - qe.start));
      }
    }
  });
});

describe('qcow2 over a VMDK backing file', () => {
  it('reads fall through to a monolithicSparse VMDK parent; writes COW from it', async () => {
    const sub = path.join(dir, 'vmdk-chain');
    fs.mkdirSync(sub);
    const base = path.join(sub, 'base.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', base, '4M']);
    qemuIo(base, ['write -P 0x61 0 1M', 'write -P 0x62 3M 100k'], 'vmdk');
    const top = path.join(sub, 'top.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'vmdk', '-b', 'base.vmdk', top, '6M']);
    qemuIo(top, ['write -P 0x63 512k 4096']);
    await expectSameAsQemu(top);
    const img = await open(top, { writable: true });
    await img.write(3 * MiB + 5000, Buffer.alloc(10, 0x64)); // partial cluster: tail/head COW from the VMDK
    await img.close();
    await expectSameAsQemu(top);
    expect(qemuCheck(top).ok).toBe(true);
  });
});
