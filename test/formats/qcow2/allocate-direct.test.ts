/**
 * A larger write into fresh clusters allocated without a plan (WritePath.tryAllocate): clusters
 * reserved at once, data written without the image lock, L2 entries set after it. The image is
 * what QEMU reads and checks clean; the commit waits for a flush that holds the image lock; a
 * write over the same clusters waits for it; a failed data write leaks, never corrupts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Image } from '../../../src/formats/types';
import { openImage } from '../../../src/image/open';
import type { HostFile } from '../../../src/io/host-file';
import { failWrites, holdNext } from '../../helpers/host-faults';
import { qemuCheck, qemuImg } from '../../helpers/qemu';
import { expectCleanAndEqual, freshWithTable, readAll, tempDir } from './helpers';

const dir = tempDir('allocate-direct');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 16 * MiB;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const fileOf = (img: Image): HostFile => (img as unknown as { file: HostFile }).file;

function counters(img: Image): { allocated: number; direct: number } {
  const d = img.stats().driver;
  return { allocated: d['allocatedClusters'] ?? 0, direct: d['directAllocatedClusters'] ?? 0 };
}

/** A fresh image whose first L2 table exists (allocating it is metadata I/O: the slow path). */
const fresh = (name: string, opts: string[] = []) => freshWithTable(dir, name, SIZE, opts);

async function write(img: Image, mirror: Buffer, at: number, data: Buffer): Promise<void> {
  await img.write(at, data);
  data.copy(mirror, at);
}

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 7 + seed) % 251 || 1;
  return b;
}

describe('qcow2 larger writes into fresh clusters, allocated without a plan', () => {
  it('allocates the clusters of 1 MiB writes at once, unaligned edges included; overwrites go in place', async () => {
    const { file, img, mirror } = await fresh('direct.qcow2');
    const before = counters(img);
    await write(img, mirror, 3 * 64 * KiB + 4 * KiB, pattern(MiB, 1)); // 17 clusters, both edges partial
    await write(img, mirror, 2 * MiB, pattern(MiB, 2)); // 16 whole clusters
    await write(img, mirror, 5 * MiB + 512, pattern(300 * KiB + 512, 3)); // 5 clusters, ends unaligned
    const after = counters(img);
    expect(after.direct - before.direct).toBe(17 + 16 + 5);
    expect(after.allocated - before.allocated).toBe(17 + 16 + 5);
    await write(img, mirror, 2 * MiB + 60 * KiB, pattern(8 * KiB, 4)); // in place, nothing new
    expect(counters(img)).toEqual(after);
    await img.flush();
    await expectCleanAndEqual(file, img, mirror);
  });

  it('declines where the slow path must plan: a COW of allocated bytes, a missing L2 table, a backing file', async () => {
    // 4 KiB clusters: an L2 table maps 2 MiB, so the second table does not exist yet.
    const { file, img, mirror } = await fresh('decline.qcow2', ['-o', 'cluster_size=4096']);
    const slow = async (at: number, data: Buffer): Promise<void> => {
      const before = counters(img);
      await write(img, mirror, at, data);
      expect(counters(img).direct).toBe(before.direct);
      expect(counters(img).allocated).toBeGreaterThan(before.allocated);
    };
    await slow(2 * KiB, pattern(64 * KiB, 5)); // starts in the allocated cluster 0
    await slow(2 * MiB - 32 * KiB, pattern(64 * KiB, 6)); // runs into the second table, not there yet
    await img.flush();
    await expectCleanAndEqual(file, img, mirror);

    const base = path.join(dir, 'decline-base.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, String(SIZE)]);
    const top = path.join(dir, 'decline-top.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    const child = await openImage(top, { writable: true });
    await child.write(0, Buffer.alloc(4 * KiB, 1)); // the L2 table
    const b = counters(child);
    await child.write(MiB, pattern(MiB, 7)); // unallocated reads the backing file: COW, the slow path
    expect(counters(child).direct).toBe(b.direct);
    await child.close();
    const check = qemuCheck(top);
    expect(check.ok, check.output).toBe(true);
  });

  it('commits after a flush that holds the image lock; a write over the same clusters waits; reads see the old zeros', async () => {
    const { file, img, mirror } = await fresh('held.qcow2');
    const data = fileOf(img);
    const heldData = holdNext(data, 'write', 'data');
    const events: string[] = [];
    const big = pattern(256 * KiB, 8);
    const writing = img.write(MiB, big).then(() => events.push('big'));
    await heldData.reached;
    expect(counters(img).direct).toBeGreaterThanOrEqual(4); // reserved before its data went out

    const during = Buffer.alloc(256 * KiB, 0xff);
    await img.read(MiB, during);
    expect(during.every((x) => x === 0)).toBe(true);

    const small = Buffer.alloc(4 * KiB, 0xbb);
    const overlapping = img.write(MiB + 64 * KiB, small).then(() => events.push('small'));

    const heldSync = holdNext(fileOf(img), 'datasync');
    const flushing = img.flush().then(() => events.push('flush'));
    await heldSync.reached; // the flush holds the image lock
    heldData.release();
    await sleep(50);
    expect(events).toEqual([]); // the data landed, its commit waits for the lock
    heldSync.release();
    await Promise.all([writing, overlapping, flushing]);
    heldData.restore();
    heldSync.restore();
    expect(events.indexOf('big')).toBeLessThan(events.indexOf('small'));
    big.copy(mirror, MiB);
    small.copy(mirror, MiB + 64 * KiB);
    await img.flush();
    await expectCleanAndEqual(file, img, mirror);
  });

  it('a failed data write commits nothing and holds nothing: the clusters leak, a retry succeeds', async () => {
    const { file, img, mirror } = await fresh('failed.qcow2');
    const restore = failWrites(fileOf(img), 'data');
    await expect(img.write(MiB, pattern(MiB, 9))).rejects.toThrow(/EIO/);
    restore();
    const got = Buffer.alloc(MiB, 0xff);
    await img.read(MiB, got);
    expect(got.every((x) => x === 0)).toBe(true); // nothing points at the failed write
    await write(img, mirror, MiB, pattern(MiB, 10)); // its clusters are free to take again
    await img.close();
    const check = qemuCheck(file);
    expect(check.json, check.output).toBeDefined();
    expect(Number(check.json!['corruptions'] ?? 0) + Number(check.json!['check-errors'] ?? 0), check.output).toBe(0);
    expect(Number(check.json?.['leaks'] ?? 0), check.output).toBe(16);
    const reopened = await openImage(file, { writable: false });
    expect((await readAll(reopened)).equals(mirror)).toBe(true);
    await reopened.close();
  });

  it('close waits for a write whose data is still in flight, so its L2 entries reach the disk', async () => {
    const { file, img, mirror } = await fresh('close.qcow2');
    const held = holdNext(fileOf(img), 'write', 'data');
    const big = pattern(512 * KiB, 11);
    const writing = img.write(2 * MiB, big);
    await held.reached;
    const closing = img.close();
    await sleep(20);
    held.release();
    await Promise.all([writing, closing]);
    held.restore();
    big.copy(mirror, 2 * MiB);
    const check = qemuCheck(file);
    expect(check.ok, check.output).toBe(true);
    const reopened = await openImage(file, { writable: false });
    expect((await readAll(reopened)).equals(mirror), 'the write acknowledged before close returned is in the image').toBe(true);
    await reopened.close();
  });
});
