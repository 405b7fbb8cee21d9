import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { vmdkDriver } from '../../../src/formats/vmdk/index';
import type { Image } from '../../../src/formats/types';
import { rng } from '../../helpers/qemu';
import { tmpDir } from './helpers';
import { reachAnywhere } from '../../helpers/reach';

/** A second, independent reader: libvmdk's vmdkinfo and vmdkmount read the images we wrote identically. */
const dir = tmpDir('libvmdk');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;
const openBacking = (p: string) => openImage(p, { writable: false });

async function makeWritten(name: string, size: number, subformat: string, seed: number, ranges: Array<[number, number]>): Promise<string> {
  const f = path.join(dir, name);
  await vmdkDriver.create!(f, { size, options: { subformat }, openBacking, reach: reachAnywhere });
  const img = await openImage(f, { writable: true });
  const r = rng(seed);
  try {
    for (const [base, span] of ranges) {
      let at = base;
      for (let i = 0; i < 12 && at < base + span; i++) {
        const len = Math.min(base + span - at, 1 + Math.floor(r() * 300_000));
        const b = Buffer.alloc(len);
        for (let k = 0; k < len; k++) b[k] = (k * 31 + i) & 0xff;
        if (subformat === 'streamOptimized') await img.write(at, b);
        else if (i % 5 === 4) await img.writeZeroes(at, len);
        else await img.write(at, b);
        at += len + Math.floor(r() * 200_000) + (subformat === 'streamOptimized' ? 65536 * 2 : 0);
        if (subformat === 'streamOptimized') at = Math.ceil(at / 65536) * 65536; // each grain once
      }
    }
  } finally {
    await img.close();
  }
  return f;
}

async function hashRanges(read: (off: number, b: Buffer) => Promise<void> | void, ranges: Array<[number, number]>): Promise<string> {
  const h = createHash('sha256');
  for (const [off, len] of ranges) {
    for (let d = 0; d < len; d += MiB) {
      const b = Buffer.alloc(Math.min(MiB, len - d));
      await read(off + d, b);
      h.update(b);
    }
  }
  return h.digest('hex');
}

function vmdkinfo(f: string): string {
  return execFileSync('vmdkinfo', [f], { encoding: 'utf8' });
}

async function viaVmdkmount<T>(f: string, fn: (raw: string) => Promise<T>): Promise<T> {
  const mnt = fs.mkdtempSync(path.join(dir, 'mnt-'));
  const r = spawnSync('vmdkmount', [f, mnt], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`vmdkmount failed: ${r.stdout}${r.stderr}`);
  try {
    return await fn(path.join(mnt, 'vmdk1'));
  } finally {
    spawnSync('fusermount', ['-u', mnt], { timeout: 30_000 });
    fs.rmSync(mnt, { recursive: true, force: true });
  }
}

const cases: Array<{ sub: string; size: number; ranges: Array<[number, number]>; type: RegExp }> = [
  { sub: 'monolithicSparse', size: 32 * MiB, ranges: [[0, 32 * MiB]], type: /Monolithic sparse/ },
  { sub: 'streamOptimized', size: 16 * MiB, ranges: [[0, 16 * MiB]], type: /Stream optimized/ },
  {
    sub: 'twoGbMaxExtentSparse',
    size: 2048 * MiB + 16 * MiB,
    ranges: [
      [0, 4 * MiB],
      [2044 * MiB, 8 * MiB],
      [2060 * MiB, 4 * MiB],
    ],
    type: /2GB extent sparse/,
  },
  { sub: 'twoGbMaxExtentFlat', size: 2048 * MiB + 16 * MiB, ranges: [[2044 * MiB, 8 * MiB]], type: /2GB extent flat/ },
];

describe('libvmdk (vmdkinfo, vmdkmount) reads our images', () => {
  let seed = 77;
  for (const c of cases) {
    const s = seed++;
    it(`${c.sub}`, async () => {
      const f = await makeWritten(`${c.sub}.vmdk`, c.size, c.sub, s, c.ranges);
      const img: Image = await openImage(f, { writable: false });
      let ours: string;
      let cid: number;
      try {
        ours = await hashRanges((o, b) => img.read(o, b), c.ranges);
        cid = (img as unknown as { cid: number }).cid;
      } finally {
        await img.close();
      }
      const info = vmdkinfo(f);
      expect(info).toMatch(c.type);
      expect(info).toContain(`(${c.size} bytes)`);
      expect(info).toContain(`Content identifier:\t\t0x${cid.toString(16).padStart(8, '0')}`);
      const theirs = await viaVmdkmount(f, async (raw) => {
        expect(fs.statSync(raw).size).toBe(c.size);
        const fd = fs.openSync(raw, 'r');
        try {
          return await hashRanges((o, b) => void fs.readSync(fd, b, 0, b.length, o), c.ranges);
        } finally {
          fs.closeSync(fd);
        }
      });
      expect(theirs).toBe(ours);
    }, 120_000);
  }

  it('vmdkinfo sees a delta disk we made with its parent CID', async () => {
    const parent = await makeWritten('lp.vmdk', 8 * MiB, 'monolithicSparse', 5, [[0, 8 * MiB]]);
    const child = path.join(dir, 'lc.vmdk');
    await vmdkDriver.create!(child, { size: 0, options: {}, backingFile: 'lp.vmdk', openBacking, reach: reachAnywhere });
    const p = await openImage(parent, { writable: false });
    const pcid = (p as unknown as { cid: number }).cid;
    await p.close();
    expect(vmdkinfo(child)).toContain(`Parent content identifier:\t0x${pcid.toString(16).padStart(8, '0')}`);
  });
});
