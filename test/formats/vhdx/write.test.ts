import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { vhdxDriver } from '../../../src/formats/vhdx';
import { reachAnywhere } from '../../helpers/reach';
import { qemuCheck, qemuCompare, qemuImg, qemuIo, rng } from '../../helpers/qemu';
import { readAll, rmrf, tmpDir } from './helpers';

const dir = tmpDir('write');
afterAll(() => rmrf(dir));
const M = 1 << 20;

/** Random writes, zeroes and discards through the driver, mirrored in memory; flushes between rounds. */
async function storm(file: string, mirror: Buffer, seed: number, ops: number): Promise<void> {
  const r = rng(seed);
  const img = await openImage(file, { writable: true });
  try {
    const size = img.virtualSize;
    for (let round = 0; round < 4; round++) {
      const jobs: Promise<void>[] = [];
      const ranges: Array<[number, number]> = [];
      for (let k = 0; k < ops; k++) {
        const len = 1 + Math.floor(r() * (r() < 0.2 ? 3 * M : 64 * 1024));
        const off = Math.floor(r() * (size - len));
        const what = r();
        // Concurrent requests on overlapping bytes have no defined order: such a one waits for the batch.
        if (ranges.some(([a, b]) => off < b && a < off + len) || jobs.length === 4) {
          await Promise.all(jobs.splice(0));
          ranges.length = 0;
        }
        ranges.push([off, off + len]);
        if (what < 0.75) {
          const data = Buffer.alloc(len, Math.floor(r() * 255) + 1);
          data.writeUInt32LE(k, 0);
          data.copy(mirror, off);
          jobs.push(img.write(off, data));
        } else if (what < 0.88) {
          mirror.fill(0, off, off + len);
          jobs.push(img.writeZeroes(off, len));
        } else {
          mirror.fill(0, off, off + len);
          jobs.push(img.discard(off, len));
        }
      }
      await Promise.all(jobs);
      await img.flush();
    }
  } finally {
    await img.close();
  }
}

describe('vhdx writes through the driver', () => {
  const cases = [
    { name: 'dyn-bs1M', size: 16 * M, opts: ['-o', 'block_size=1M'] },
    { name: 'dyn-bs8M-log4M', size: 40 * M, opts: ['-o', 'block_size=8M,log_size=4M'] },
    { name: 'dyn-nozero', size: 12 * M, opts: ['-o', 'block_size=1M,block_state_zero=off'] },
    { name: 'fixed-bs1M', size: 10 * M, opts: ['-o', 'block_size=1M,subformat=fixed'] },
  ];
  for (const c of cases) {
    it(`${c.name}: qemu-img check clean and compare equal`, async () => {
      const file = path.join(dir, `${c.name}.vhdx`);
      qemuImg(['create', '-f', 'vhdx', ...c.opts, file, String(c.size)]);
      qemuIo(file, ['write -P 0x5a 0 3M'], 'vhdx');
      const mirror = Buffer.alloc(c.size);
      mirror.fill(0x5a, 0, 3 * M);
      await storm(file, mirror, c.size, 40);
      const mirrorFile = `${file}.mirror`;
      fs.writeFileSync(mirrorFile, mirror);
      const chk = qemuCheck(file, 'vhdx');
      expect(chk.ok, chk.output).toBe(true);
      const cmp = qemuCompare(file, mirrorFile, 'vhdx');
      expect(cmp.equal, cmp.output).toBe(true);
      expect((await readAll(file)).equals(mirror)).toBe(true);
    });
  }

  it('an image made by our create: qemu-img reads it, check clean, writes round-trip', async () => {
    const variants: Array<Record<string, string>> = [{}, { subformat: 'fixed', block_size: '2M' }, { block_size: '1M', log_size: '2M' }];
    for (const o of variants) {
      const file = path.join(dir, `ours-${Object.values(o).join('-') || 'default'}.vhdx`);
      await vhdxDriver.create!(file, {
        size: 20 * M,
        options: o,
        reach: reachAnywhere,
        openBacking: (p) => openImage(p, { writable: false }),
      });
      const info = JSON.parse(qemuImg(['info', '--output=json', '-f', 'vhdx', file])) as Record<string, unknown>;
      expect(info['virtual-size']).toBe(20 * M);
      expect(qemuCheck(file, 'vhdx').ok).toBe(true);
      const mirror = Buffer.alloc(20 * M);
      await storm(file, mirror, 7, 20);
      const mirrorFile = `${file}.mirror`;
      fs.writeFileSync(mirrorFile, mirror);
      const chk = qemuCheck(file, 'vhdx');
      expect(chk.ok, chk.output).toBe(true);
      const cmp = qemuCompare(file, mirrorFile, 'vhdx');
      expect(cmp.equal, cmp.output).toBe(true);
    }
  });

  it('concurrent writes to one unallocated block allocate it once', async () => {
    const file = path.join(dir, 'race.vhdx');
    qemuImg(['create', '-f', 'vhdx', '-o', 'block_size=1M', file, String(4 * M)]);
    const img = await openImage(file, { writable: true });
    const mirror = Buffer.alloc(4 * M);
    try {
      await Promise.all(
        Array.from({ length: 16 }, (_, i) => {
          const d = Buffer.alloc(4096, i + 1);
          d.copy(mirror, M + i * 8192);
          return img.write(M + i * 8192, d);
        }),
      );
      expect(img.stats().driver['allocations']).toBe(1);
    } finally {
      await img.close();
    }
    fs.writeFileSync(`${file}.mirror`, mirror);
    expect(qemuCheck(file, 'vhdx').ok).toBe(true);
    expect(qemuCompare(file, `${file}.mirror`, 'vhdx').equal).toBe(true);
  });

  it('whole-block zeroes: a dynamic disk takes the ZERO state and gives the space back; a fixed disk keeps its blocks', async () => {
    for (const sub of ['dynamic', 'fixed']) {
      const file = path.join(dir, `zero-${sub}.vhdx`);
      qemuImg(['create', '-f', 'vhdx', '-o', `block_size=1M,subformat=${sub}`, file, String(8 * M)]);
      qemuIo(file, ['write -P 0x66 0 8M'], 'vhdx');
      const usedBefore = fs.statSync(file).blocks;
      const img = await openImage(file, { writable: true });
      try {
        await img.writeZeroes(2 * M, 3 * M);
        await img.discard(6 * M + 4096, 8192);
        await img.flush();
        const ext = await img.map(0, 8 * M);
        const kindAt = (o: number) => ext.find((e) => e.offset <= o && o < e.offset + e.length)!.kind;
        expect(kindAt(3 * M)).toBe(sub === 'fixed' ? 'data' : 'zero');
        expect(kindAt(6 * M + 4096)).toBe('data');
      } finally {
        await img.close();
      }
      const mirror = Buffer.alloc(8 * M, 0x66);
      mirror.fill(0, 2 * M, 5 * M);
      mirror.fill(0, 6 * M + 4096, 6 * M + 4096 + 8192);
      fs.writeFileSync(`${file}.mirror`, mirror);
      expect(qemuCheck(file, 'vhdx').ok).toBe(true);
      expect(qemuCompare(file, `${file}.mirror`, 'vhdx').equal).toBe(true);
      expect(fs.statSync(file).blocks).toBeLessThan(usedBefore - 2 * 2048); // >= 2 MiB given back (punched)
    }
  });
});
