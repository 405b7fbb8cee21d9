/**
 * Seeded random write storms for every image variant: writes through the driver mirrored to a
 * Buffer; after close(), `qemu-img check` must be clean (no errors, no leaks) and
 * `qemu-img compare` must equal the mirror.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { qemuCheck, qemuCompare, qemuImg, qemuIo, qemuRaw } from '../../helpers/qemu';
import { readAll, tempDir } from './helpers';
import { storm } from './storm';

const dir = tempDir('storm');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

interface Variant {
  name: string;
  make: (f: string) => void;
  size: number;
  maxLen?: number;
  ops?: number;
}

const create = (opts: string, size: number) => (f: string) =>
  qemuImg(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), f, String(size)]);

const variants: Variant[] = [
  { name: 'default', make: create('', 16 * MiB), size: 16 * MiB },
  { name: 'cluster-512', make: create('cluster_size=512', 4 * MiB), size: 4 * MiB, maxLen: 256 * 1024, ops: 120 },
  { name: 'cluster-2m', make: create('cluster_size=2M', 24 * MiB), size: 24 * MiB },
  { name: 'v2', make: create('compat=0.10', 16 * MiB), size: 16 * MiB },
  { name: 'lazy-refcounts', make: create('lazy_refcounts=on', 16 * MiB), size: 16 * MiB },
  { name: 'extended-l2', make: create('extended_l2=on', 16 * MiB), size: 16 * MiB },
  ...[1, 2, 4, 8, 32, 64].map((b) => ({
    name: `refcount-${b}`,
    make: create(`refcount_bits=${b},cluster_size=4096`, 8 * MiB),
    size: 8 * MiB,
    maxLen: 512 * 1024,
    ops: 120,
  })),
  {
    name: 'refcount-1-512b (refcount table must grow)',
    make: create('refcount_bits=64,cluster_size=512', 4 * MiB),
    size: 4 * MiB,
    maxLen: 128 * 1024,
    ops: 120,
  },
  {
    name: 'prefilled (overwrites of allocated clusters)',
    make: (f) => {
      create('', 16 * MiB)(f);
      qemuIo(f, ['write -P 0x3c 0 16M', 'write -z 4M 1M']);
    },
    size: 16 * MiB,
  },
  {
    name: 'backing chain qcow2 -> qcow2 -> raw',
    make: (f) => {
      const base = `${f}.base.raw`;
      fs.writeFileSync(base, Buffer.alloc(6 * MiB, 0x9d));
      const mid = `${f}.mid.qcow2`;
      qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', path.basename(base), mid, '12M']);
      qemuIo(mid, ['write -P 0x8e 2M 3M']);
      qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', path.basename(mid), f, '16M']);
      qemuIo(f, ['write -P 0x7f 5M 1M']);
    },
    size: 16 * MiB,
  },
  {
    name: 'extended L2 over a backing file (subcluster allocation)',
    make: (f) => {
      const base = `${f}.base.raw`;
      fs.writeFileSync(base, Buffer.alloc(16 * MiB, 0x4e));
      qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', path.basename(base), '-o', 'extended_l2=on,cluster_size=128k', f, '16M']);
      qemuIo(f, ['write -P 0x4f 100000 5000', 'write -z 3M 16k', 'write -P 0x50 5M 1M']);
    },
    size: 16 * MiB,
  },
  {
    name: 'snapshots (shared clusters, COPIED flags)',
    make: (f) => {
      create('', 16 * MiB)(f);
      qemuIo(f, ['write -P 0x61 0 8M']);
      qemuImg(['snapshot', '-c', 's1', f]);
      qemuIo(f, ['write -P 0x62 4M 8M']);
      qemuImg(['snapshot', '-c', 's2', f]);
    },
    size: 16 * MiB,
  },
  {
    name: 'compressed (zlib)',
    make: (f) => {
      const src = `${f}.src.qcow2`;
      create('', 16 * MiB)(src);
      qemuIo(src, ['write -P 0x51 0 10M']);
      qemuImg(['convert', '-c', '-O', 'qcow2', src, f]);
    },
    size: 16 * MiB,
  },
  {
    name: 'compressed (zstd)',
    make: (f) => {
      const src = `${f}.src.qcow2`;
      create('', 16 * MiB)(src);
      qemuIo(src, ['write -P 0x52 0 10M']);
      qemuImg(['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', src, f]);
    },
    size: 16 * MiB,
  },
];

describe('qcow2 write storms (oracle: qemu-img check + compare)', () => {
  variants.forEach((v, idx) => {
    it(v.name, async () => {
      const f = path.join(dir, `storm-${idx}.qcow2`);
      v.make(f);
      const snapsBefore = v.name.startsWith('snapshots')
        ? ['s1', 's2'].map((s) => {
            const out = `${f}.${s}.before.raw`;
            qemuImg(['convert', '-O', 'raw', '-l', `snapshot.name=${s}`, f, out]);
            return out;
          })
        : [];
      const mirror = fs.readFileSync(qemuRaw(f));
      expect(mirror.length).toBe(v.size);
      const img = await openImage(f, { writable: true, tuning: { qcow2: { cacheSize: 256 * 1024 } } });
      const { syncWrites } = await storm(img, mirror, { seed: 1000 + idx, ops: v.ops ?? 200, maxLen: v.maxLen, trySync: true });
      // Overwrites of allocated clusters take the synchronous path at least sometimes.
      if (v.name.startsWith('prefilled')) expect(syncWrites).toBeGreaterThan(10);
      // Read-your-writes before close.
      expect((await readAll(img)).equals(mirror)).toBe(true);
      await img.close();
      const mirrorFile = `${f}.mirror.raw`;
      fs.writeFileSync(mirrorFile, mirror);
      const check = qemuCheck(f);
      expect(check.ok, check.output).toBe(true);
      const cmp = qemuCompare(f, mirrorFile);
      expect(cmp.equal, cmp.output).toBe(true);
      // Snapshots are untouched by writes to the active layer.
      for (const [i, s] of ['s1', 's2'].entries()) {
        if (!snapsBefore[i]) continue;
        const out = `${f}.${s}.after.raw`;
        qemuImg(['convert', '-O', 'raw', '-l', `snapshot.name=${s}`, f, out]);
        expect(fs.readFileSync(out).equals(fs.readFileSync(snapsBefore[i]))).toBe(true);
      }
    });
  });
});

describe('qcow2 write storms over several sessions', () => {
  for (const opts of ['cluster_size=4096', 'extended_l2=on', 'compat=0.10,cluster_size=512']) {
    it(`open/storm/close three times (${opts})`, async () => {
      const f = path.join(dir, `sessions-${opts.replace(/[^a-z0-9]/gi, '_')}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, f, String(8 * MiB)]);
      const mirror = Buffer.alloc(8 * MiB);
      for (let s = 0; s < 3; s++) {
        const img = await openImage(f, { writable: true, tuning: { qcow2: { cacheSize: s === 1 ? 8192 : undefined } } });
        await storm(img, mirror, { seed: 500 + s, ops: 60, maxLen: 512 * 1024 });
        await img.close();
        const check = qemuCheck(f);
        expect(check.ok, check.output).toBe(true);
      }
      fs.writeFileSync(`${f}.mirror`, mirror);
      expect(qemuCompare(f, `${f}.mirror`).equal).toBe(true);
    });
  }
});
