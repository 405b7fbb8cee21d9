/**
 * Image.writeSync allocating clusters in one synchronous step (WritePath.tryAllocateSync): when
 * it does, the image is what QEMU reads and checks clean; when it must not (metadata I/O, a COW,
 * another change in progress), it declines having changed nothing.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Image } from '../../../src/formats/types';
import { openImage } from '../../../src/image/open';
import { qemuImg, qemuIo } from '../../helpers/qemu';
import { expectCleanAndEqual, freshWithTable, tempDir } from './helpers';

const dir = tempDir('allocate-sync');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const KiB = 1024;
const MiB = 1024 * KiB;
const CLUSTER = 64 * KiB;

function counters(img: Image): { allocated: number; sync: number; size: number } {
  const d = img.stats().driver;
  return { allocated: d['allocatedClusters'] ?? 0, sync: d['syncAllocatedClusters'] ?? 0, size: fs.statSync(img.path).size };
}

const fresh = (name: string, opts: string[] = []) => freshWithTable(dir, name, 64 * MiB, opts);

describe('qcow2 writeSync allocating clusters', () => {
  it('allocates fresh clusters at once: partial, whole and two-cluster writes, in any order', async () => {
    const { file, img, mirror } = await fresh('alloc.qcow2');
    const writes: Array<[number, number]> = [
      [5 * CLUSTER + 4 * KiB, 4 * KiB], // the middle of a cluster: the rest reads as zeros
      [2 * CLUSTER, CLUSTER], // a whole cluster
      [9 * CLUSTER - 8 * KiB, 16 * KiB], // two clusters, one contiguous new run
      [40 * MiB + 512, 3 * 512], // unaligned, in the same table
    ];
    const before = counters(img);
    for (const [at, len] of writes) {
      const data = Buffer.alloc(len, (at / 512) & 0xff || 1);
      expect(img.writeSync!(at, data)).toBe(true);
      data.copy(mirror, at);
      data.fill(0xee); // the caller's buffer is free once writeSync returns
    }
    const after = counters(img);
    expect(after.sync - before.sync).toBe(5);
    expect(after.allocated - before.allocated).toBe(5);
    await img.flush();
    await expectCleanAndEqual(file, img, mirror);
  });

  it('declines, changing nothing, where it would need I/O or another change is in progress', async () => {
    // 4 KiB clusters: an L2 table maps 2 MiB, so most of the disk has no table yet.
    const { file, img, mirror } = await fresh('decline.qcow2', ['-o', 'cluster_size=4096']);
    const data = Buffer.alloc(4 * KiB, 0x22);
    const declines = (at: number, buf = data): void => {
      const before = counters(img);
      expect(img.writeSync!(at, buf)).toBe(false);
      expect(counters(img)).toEqual(before);
    };
    declines(64 * KiB, Buffer.alloc(4 * KiB)); // all zeros: the asynchronous way may leave it unallocated
    declines(2 * KiB); // half in the allocated cluster 0, half in a new one: not all new
    declines(10 * MiB); // its L2 table is not allocated yet
    const flushing = img.flush(); // holds the image lock until it is done
    declines(64 * KiB);
    await flushing;
    expect(img.writeSync!(64 * KiB, data)).toBe(true);
    data.copy(mirror, 64 * KiB);
    await expectCleanAndEqual(file, img, mirror);
  });

  it('declines over a backing file (the rest of the cluster is copied from it)', async () => {
    const base = path.join(dir, 'base.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '64M']);
    qemuIo(base, ['write -P 0x33 0 1M']);
    const top = path.join(dir, 'top.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    const img = await openImage(top, { writable: true });
    try {
      await img.write(0, Buffer.alloc(512, 0x44)); // the L2 table exists
      const before = counters(img);
      expect(img.writeSync!(128 * KiB, Buffer.alloc(4 * KiB, 0x55))).toBe(false);
      expect(counters(img)).toEqual(before);
    } finally {
      await img.close();
    }
  });
});
