import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { driverOptions, openImage } from '../../../src/image/open';
import { Confinement } from '../../../src/image/confine';
import { vmdkDriver } from '../../../src/formats/vmdk/index';
import type { Image } from '../../../src/formats/types';
import { qemuCheck, qemuCompare, qemuImg, qemuIo, qemuRaw, rng } from '../../helpers/qemu';
import { makeHandSparse, tmpDir } from './helpers';
import { reachAnywhere } from '../../helpers/reach';

/**
 * Seeded random write storms (unaligned, cross-grain, cross-extent, all-zero, 1 B..2 MiB,
 * concurrent writers on disjoint ranges), mirrored to a plain file; after close the image must
 * pass `qemu-img check` and `qemu-img compare` equal to the mirror. Each variant twice: with the
 * seed's multi-grain allocation and with --no-multi-alloc.
 */
const dir = tmpDir('storm');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;
interface Variant {
  name: string;
  size: number;
  make(file: string): Promise<void> | void;
  /** Guest ranges the storm aims at (near extent boundaries for split images). */
  hot?: Array<[number, number]>;
  /** Grain-table cache budget (tiny: tables get evicted and reloaded mid-storm). */
  cacheSize?: number;
}

const TWO_G = 2048 * MiB;
const variants: Variant[] = [
  { name: 'monolithicSparse (qemu-img)', size: 16 * MiB, make: (f) => void qemuImg(['create', '-f', 'vmdk', f, '16M']) },
  {
    name: 'monolithicSparse (ours)',
    size: 16 * MiB + 4096,
    make: (f) =>
      vmdkDriver.create!(f, {
        size: 16 * MiB + 4096,
        options: {},
        openBacking: () => Promise.reject(new Error('none')),
        reach: reachAnywhere,
      }),
  },
  { name: 'zeroed_grain=on', size: 16 * MiB, make: (f) => void qemuImg(['create', '-f', 'vmdk', '-o', 'zeroed_grain=on', f, '16M']) },
  {
    name: 'monolithicFlat',
    size: 16 * MiB,
    make: (f) => void qemuImg(['create', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', f, '16M']),
  },
  {
    name: 'twoGbMaxExtentSparse',
    size: TWO_G + 32 * MiB,
    hot: [
      [0, 8 * MiB],
      [TWO_G - 8 * MiB, 16 * MiB],
      [TWO_G + 24 * MiB, 8 * MiB],
    ],
    make: (f) => void qemuImg(['create', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', f, String(TWO_G + 32 * MiB)]),
  },
  {
    name: 'twoGbMaxExtentFlat',
    size: TWO_G + 32 * MiB,
    hot: [[TWO_G - 8 * MiB, 16 * MiB]],
    make: (f) => void qemuImg(['create', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentFlat', f, String(TWO_G + 32 * MiB)]),
  },
  {
    name: 'hand-made: 8 KiB grains, 64-entry tables, no tables preallocated, zeroed grains, 1 KiB table cache',
    size: 12 * MiB + 1024,
    cacheSize: 1024,
    make: (f) => makeHandSparse(f, { capacitySectors: (12 * MiB + 1024) / 512, grainSectors: 16, gtes: 64, zeroGrain: true }),
  },
  {
    name: 'delta disk over a parent with data',
    size: 16 * MiB,
    make: (f) => {
      const parent = `${f}.parent.vmdk`;
      qemuImg(['create', '-f', 'vmdk', parent, '16M']);
      qemuIo(parent, ['write -P 0x5a 0 16M'], 'vmdk');
      qemuImg(['create', '-f', 'vmdk', '-o', 'zeroed_grain=on', '-b', path.basename(parent), '-F', 'vmdk', f]);
    },
  },
];

function fillRandom(r: () => number, b: Buffer): void {
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(Math.floor(r() * 0x100000000), i - (i + 4 > b.length ? i + 4 - b.length : 0));
}

/** Returns how many writes the synchronous path (Image.writeSync, tried for half the single-buffer writes) took. */
async function storm(img: Image, mirrorFd: number, seed: number, ops: number, hot: Array<[number, number]>): Promise<number> {
  const r = rng(seed);
  const rSync = rng(seed + 77); // its own sequence: the storm's ops stay those of the seed
  let syncWrites = 0;
  const pick = (n: number) => Math.floor(r() * n);
  for (let done = 0; done < ops;) {
    // A batch of concurrent requests on disjoint byte ranges (they may share grains).
    const batch = 1 + pick(6);
    const taken: Array<[number, number]> = [];
    const jobs: Promise<void>[] = [];
    for (let k = 0; k < batch && done < ops; k++, done++) {
      const [base, span] = hot[pick(hot.length)]!;
      const sizeClass = r();
      let len = sizeClass < 0.6 ? 1 + pick(64 * 1024) : sizeClass < 0.9 ? 1 + pick(256 * 1024) : 1 + pick(2 * MiB);
      len = Math.min(len, span);
      let off = base + pick(span - len + 1);
      if (r() < 0.4) {
        off -= off % 4096;
        len = Math.max(4096, len - (len % 4096));
        if (off + len > base + span) off = base + span - len;
      }
      if (taken.some(([a, n]) => off < a + n && a < off + len)) continue;
      taken.push([off, len]);
      const kind = r();
      if (kind < 0.1) {
        fs.writeSync(mirrorFd, Buffer.alloc(len), 0, len, off);
        jobs.push(img.writeZeroes(off, len));
      } else {
        const data = Buffer.alloc(len);
        if (kind > 0.2) fillRandom(r, data);
        fs.writeSync(mirrorFd, data, 0, len, off);
        // Split some payloads into a vector, as the merger may hand them over.
        const parts = len > 8 && r() < 0.3 ? [data.subarray(0, len >> 1), data.subarray(len >> 1)] : data;
        if (!Array.isArray(parts) && img.writeSync && rSync() < 0.5 && img.writeSync(off, parts)) {
          syncWrites++;
          parts.fill(0xee); // the caller's buffer: free again once writeSync returns
        } else jobs.push(img.write(off, parts));
      }
      if (r() < 0.05) jobs.push(img.flush());
    }
    await Promise.all(jobs);
  }
  // Read-your-writes before close.
  for (let i = 0; i < 20; i++) {
    const [base, span] = hot[pick(hot.length)]!;
    const len = Math.min(span, 1 + pick(300 * 1024));
    const off = base + pick(span - len + 1);
    const got = Buffer.alloc(len);
    const want = Buffer.alloc(len);
    await img.read(off, got);
    fs.readSync(mirrorFd, want, 0, len, off);
    expect(got.equals(want), `read-back at ${off}+${len}`).toBe(true);
  }
  return syncWrites;
}

describe('vmdk write storms (qemu-img check + compare)', () => {
  let seed = 1000;
  for (const v of variants) {
    for (const noMultiAlloc of [false, true]) {
      const s = seed++;
      it(`${v.name}${noMultiAlloc ? ' --no-multi-alloc' : ''} (seed ${s})`, async () => {
        const f = path.join(dir, `${v.name.replace(/\W+/g, '_')}-${noMultiAlloc ? 'qemu' : 'multi'}.vmdk`);
        await v.make(f);
        const mirror = qemuRaw(f, `${f}.mirror`);
        const fd = fs.openSync(mirror, 'r+');
        try {
          const img = await openImage(f, { writable: true, tuning: { vmdk: { noMultiAlloc, tableCacheBytes: v.cacheSize } } });
          expect(img.readOnly).toBe(false);
          try {
            const syncWrites = await storm(img, fd, s, 120, v.hot ?? [[0, v.size]]);
            const st = img.stats().driver;
            if (!v.name.includes('Flat')) expect(st['grainsAllocated']).toBeGreaterThan(0);
            // Rewrites of allocated grains (and every flat write after the first) take the synchronous path.
            if (v.cacheSize === undefined) expect(syncWrites).toBeGreaterThan(0);
          } finally {
            await img.close();
          }
        } finally {
          fs.closeSync(fd);
        }
        const ours = await vmdkDriver.check!(f, {
          ...driverOptions(f, { writable: false, warn: () => {}, confinement: await Confinement.create(path.dirname(f)) }),
          repair: false,
        });
        expect(ours.errors + ours.corruptions, ours.messages.join('\n')).toBe(0);
        const check = qemuCheck(f, 'vmdk');
        expect(check.ok, check.output).toBe(true);
        const cmp = qemuCompare(f, mirror, 'vmdk');
        expect(cmp.equal, cmp.output).toBe(true);
        fs.rmSync(mirror);
      }, 180_000);
    }
  }
});
