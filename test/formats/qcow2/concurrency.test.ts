/**
 * Concurrency: many writers into the same unallocated clusters at once never allocate a cluster
 * twice; reads running alongside writes see either old or new data, never garbage; the image
 * stays consistent (qemu-img check) and equal to the mirror.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { qemuCheck, qemuCompare, qemuImg, rng } from '../../helpers/qemu';
import { tempDir } from './helpers';

const dir = tempDir('conc');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

describe('qcow2 concurrency', () => {
  it('256 concurrent 1 KiB writers into the same 4 unallocated clusters allocate each cluster once', async () => {
    const f = path.join(dir, 'same.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '4M']);
    const img = await openImage(f, { writable: true });
    const mirror = Buffer.alloc(4 * MiB);
    const tasks: Promise<void>[] = [];
    for (let w = 0; w < 256; w++) {
      const off = MiB + w * 1024;
      const d = Buffer.alloc(1024, (w % 250) + 1);
      d.copy(mirror, off);
      tasks.push(img.write(off, d));
    }
    await Promise.all(tasks);
    expect(img.stats().driver['allocatedClusters']).toBe(4 + 1); // 4 data clusters + 1 L2 table
    await img.close();
    fs.writeFileSync(`${f}.mirror`, mirror);
    expect(qemuCheck(f).ok).toBe(true);
    expect(qemuCompare(f, `${f}.mirror`).equal).toBe(true);
  });

  it('reads alongside writes see old or new bytes only; final state equals the mirror', async () => {
    const f = path.join(dir, 'rw.qcow2');
    const b = path.join(dir, 'rw-base.raw');
    fs.writeFileSync(b, Buffer.alloc(8 * MiB, 0xbb));
    qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', b, '-o', 'cluster_size=16k', f, '8M']);
    const img = await openImage(f, { writable: true, tuning: { qcow2: { cacheSize: 64 * 1024 } } });
    const r = rng(99);
    const mirror = Buffer.alloc(8 * MiB, 0xbb);
    // Each 64 KiB block is written once with its own byte value; readers check each block is all-old or all-new.
    const blocks = 128;
    const order = Array.from({ length: blocks }, (_, i) => i).sort(() => r() - 0.5);
    let bad = 0;
    const writer = async (): Promise<void> => {
      for (const blk of order) {
        const d = Buffer.alloc(65536, (blk % 200) + 1);
        d.copy(mirror, blk * 65536);
        await img.write(blk * 65536, d);
      }
    };
    const reader = async (): Promise<void> => {
      for (let k = 0; k < 300; k++) {
        const blk = Math.floor(r() * blocks);
        const got = Buffer.alloc(65536);
        await img.read(blk * 65536, got);
        const v = got[0]!;
        if (v !== 0xbb && v !== (blk % 200) + 1) bad++;
        if (!got.every((x) => x === v)) bad++;
      }
    };
    await Promise.all([writer(), reader(), reader(), reader()]);
    expect(bad).toBe(0);
    await img.close();
    fs.writeFileSync(`${f}.mirror`, mirror);
    expect(qemuCheck(f).ok).toBe(true);
    expect(qemuCompare(f, `${f}.mirror`).equal).toBe(true);
  });

  it.each([
    ['default', ''],
    ['backing file', 'backing'],
    ['extended L2', 'extended_l2=on'],
  ])(
    'concurrent writes, zero writes and discards on disjoint bytes of shared clusters (%s): check clean, equal to the mirror',
    async (_name, opt) => {
      const f = path.join(dir, `mix-${opt || 'plain'}.qcow2`);
      const size = 4 * MiB;
      const mirror = Buffer.alloc(size);
      if (opt === 'backing') {
        const b = path.join(dir, 'mix-base.raw');
        fs.writeFileSync(b, Buffer.alloc(size, 0x5a));
        mirror.fill(0x5a);
        qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', b, '-o', 'cluster_size=16k', f, String(size)]);
      } else {
        qemuImg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=16k${opt ? `,${opt}` : ''}`, f, String(size)]);
      }
      const img = await openImage(f, { writable: true, tuning: { qcow2: { cacheSize: 64 * 1024 } } });
      const r = rng(opt.length + 7);
      const page = 4096;
      for (let round = 0; round < 40; round++) {
        // Cut the disk at random page boundaries: neighbouring pieces share a cluster, never a byte.
        const cuts = new Set<number>([0, size]);
        while (cuts.size < 12) cuts.add(Math.floor(r() * (size / page)) * page);
        const edges = [...cuts].sort((a, b) => a - b);
        const tasks: Promise<void>[] = [];
        for (let k = 0; k + 1 < edges.length; k++) {
          const off = edges[k]!;
          const len = Math.min(edges[k + 1]! - off, (1 + Math.floor(r() * 24)) * page);
          const x = r();
          if (x < 0.25) {
            mirror.fill(0, off, off + len);
            tasks.push(img.discard(off, len));
          } else if (x < 0.4) {
            mirror.fill(0, off, off + len);
            tasks.push(img.writeZeroes(off, len));
          } else if (x < 0.95) {
            const d = Buffer.alloc(len, 1 + ((round * 13 + k) % 250));
            d.copy(mirror, off);
            tasks.push(img.write(off, d));
          } else {
            tasks.push(img.flush());
          }
        }
        await Promise.all(tasks);
      }
      const got = Buffer.alloc(size);
      await img.read(0, got);
      expect(got.equals(mirror)).toBe(true);
      await img.close();
      fs.writeFileSync(`${f}.mirror`, mirror);
      expect(qemuCheck(f).ok).toBe(true);
      expect(qemuCompare(f, `${f}.mirror`).equal).toBe(true);
    },
  );
});
