/**
 * qcow2 discard against QEMU: whole clusters unallocated (zero clusters over a backing file),
 * partial ones zeroed (subclusters with extended L2), snapshots keep their clusters, freed host
 * clusters punched and reused by later writes; qemu-img check clean and the raw view equal to a
 * mirror that got the same writes and zeros.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Image } from '../../../src/formats/types';
import { openImage } from '../../../src/image/open';
import { qemuCheck, qemuImg, qemuIo } from '../../helpers/qemu';
import { readAll, tempDir } from './helpers';

const dir = tempDir('discard');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;
const KiB = 1024;

interface MapRow {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
  depth: number;
}
function qemuMap(file: string): MapRow[] {
  return JSON.parse(qemuImg(['map', '--output=json', file])) as MapRow[];
}
/** Guest bytes qemu-img map says this image's top layer stores as data. */
function topData(file: string): number {
  return qemuMap(file)
    .filter((r) => r.data && r.depth === 0)
    .reduce((n, r) => n + r.length, 0);
}
function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i += 4) b.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
  return b;
}
async function expectContent(img: Image, mirror: Buffer): Promise<void> {
  const ours = await readAll(img);
  expect(ours.equals(mirror)).toBe(true);
}
function convertRaw(file: string, snapshot?: string): Buffer {
  const out = path.join(dir, `out-${Math.random().toString(36).slice(2)}.raw`);
  qemuImg(['convert', ...(snapshot ? ['-l', snapshot] : []), '-O', 'raw', file, out]);
  const b = fs.readFileSync(out);
  fs.rmSync(out);
  return b;
}
const tick = () => new Promise((r) => setImmediate(r));

describe('qcow2 discard', () => {
  it('whole clusters become unallocated, partial ones zeros; space is punched and reused', async () => {
    const f = path.join(dir, 'plain.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '64M']);
    const mirror = Buffer.alloc(64 * MiB);
    const img = await openImage(f, { writable: true });
    const data = pattern(32 * MiB, 1);
    await img.write(0, data);
    data.copy(mirror, 0);
    await img.flush();
    const grown = fs.statSync(f).size;
    // Whole clusters [1M, 17M), a partial head and tail, and a range inside one cluster.
    await img.discard(1 * MiB - 4 * KiB, 16 * MiB + 12 * KiB);
    mirror.fill(0, 1 * MiB - 4 * KiB, 17 * MiB + 8 * KiB);
    await img.discard(20 * MiB + 8 * KiB, 16 * KiB);
    mirror.fill(0, 20 * MiB + 8 * KiB, 20 * MiB + 24 * KiB);
    await expectContent(img, mirror);
    await img.flush();
    await tick();
    // Freed clusters are reused: 16 MiB of new data does not grow the file.
    const fresh = pattern(16 * MiB, 2);
    await img.write(40 * MiB, fresh);
    fresh.copy(mirror, 40 * MiB);
    await expectContent(img, mirror);
    await img.close();
    expect(fs.statSync(f).size).toBe(grown);
    const check = qemuCheck(f);
    expect(check.ok, check.output).toBe(true);
    expect(convertRaw(f).equals(mirror)).toBe(true);
    expect(topData(f)).toBe(32 * MiB - 16 * MiB + 16 * MiB);
  });

  it('a later session reuses clusters left free below the end (by us or by QEMU) before growing the file', async () => {
    const f = path.join(dir, 'later.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '64M']);
    qemuIo(f, ['write -P 0x41 0 24M', 'discard 0 8M']); // QEMU frees 8 MiB of clusters
    let img = await openImage(f, { writable: true });
    await img.discard(8 * MiB, 8 * MiB); // and we free 8 more
    await img.close();
    const size = fs.statSync(f).size;
    img = await openImage(f, { writable: true });
    const data = pattern(16 * MiB, 4);
    await img.write(32 * MiB, data);
    await img.close();
    expect(fs.statSync(f).size).toBe(size);
    const check = qemuCheck(f);
    expect(check.ok, check.output).toBe(true);
    const mirror = Buffer.alloc(64 * MiB);
    mirror.fill(0x41, 16 * MiB, 24 * MiB);
    data.copy(mirror, 32 * MiB);
    expect(convertRaw(f).equals(mirror)).toBe(true);
  });

  it('punches the freed host range (du drops)', async () => {
    const f = path.join(dir, 'punch.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '64M']);
    qemuIo(f, ['write -P 0x5a 0 48M']);
    const before = fs.statSync(f).blocks * 512;
    const img = await openImage(f, { writable: true });
    await img.discard(0, 48 * MiB);
    await img.flush();
    await tick();
    await img.close();
    const after = fs.statSync(f).blocks * 512;
    expect(before - after).toBeGreaterThan(40 * MiB);
    expect(qemuCheck(f).ok).toBe(true);
    expect(topData(f)).toBe(0);
  });

  it('over a backing file: zero clusters, so the backing data does not show through', async () => {
    const base = path.join(dir, 'base.raw');
    const top = path.join(dir, 'top.qcow2');
    fs.writeFileSync(base, Buffer.alloc(8 * MiB, 0x42));
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', top]);
    qemuIo(top, ['write -P 0x11 1M 1M']);
    const mirror = Buffer.alloc(8 * MiB, 0x42);
    mirror.fill(0x11, 1 * MiB, 2 * MiB);
    const img = await openImage(top, { writable: true });
    await img.discard(512 * KiB, 2 * MiB); // backing-only clusters and data clusters alike
    mirror.fill(0, 512 * KiB, 2560 * KiB);
    await expectContent(img, mirror);
    await img.close();
    expect(qemuCheck(top).ok).toBe(true);
    expect(convertRaw(top).equals(mirror)).toBe(true);
    const zeros = qemuMap(top)
      .filter((r) => r.zero && r.depth === 0)
      .reduce((n, r) => n + r.length, 0);
    expect(zeros).toBe(2 * MiB);
  });

  it('a snapshot keeps its clusters: only the active reference goes', async () => {
    const f = path.join(dir, 'snap.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '16M']);
    qemuIo(f, ['write -P 0x33 0 8M']);
    qemuImg(['snapshot', '-c', 's1', f]);
    const snap = convertRaw(f, 's1');
    const img = await openImage(f, { writable: true });
    await img.discard(0, 16 * MiB);
    await img.flush();
    await tick();
    await img.write(0, pattern(8 * MiB, 3)); // must not land on the snapshot's clusters
    await img.close();
    const check = qemuCheck(f);
    expect(check.ok, check.output).toBe(true);
    expect(convertRaw(f, 's1').equals(snap)).toBe(true);
    const mirror = Buffer.alloc(16 * MiB);
    pattern(8 * MiB, 3).copy(mirror);
    expect(convertRaw(f).equals(mirror)).toBe(true);
  });

  it('extended L2: partial clusters become zero subclusters, a cluster with none left is freed', async () => {
    const f = path.join(dir, 'ext.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', f, '8M']);
    qemuIo(f, ['write -P 0x77 0 256k']);
    const mirror = Buffer.alloc(8 * MiB);
    mirror.fill(0x77, 0, 256 * KiB);
    const img = await openImage(f, { writable: true });
    await img.discard(8 * KiB, 16 * KiB); // whole subclusters inside cluster 0
    mirror.fill(0, 8 * KiB, 24 * KiB);
    await img.discard(64 * KiB + 32 * KiB, 32 * KiB); // second half of cluster 1
    await img.discard(64 * KiB, 32 * KiB); // first half: cluster 1 has no subcluster left
    mirror.fill(0, 64 * KiB, 128 * KiB);
    await expectContent(img, mirror);
    await img.close();
    const check = qemuCheck(f);
    expect(check.ok, check.output).toBe(true);
    expect(convertRaw(f).equals(mirror)).toBe(true);
    expect(topData(f)).toBe(256 * KiB - 16 * KiB - 64 * KiB);
  });

  it('compat=0.10 over a backing file: written zeros (no zero clusters in v2)', async () => {
    const base = path.join(dir, 'base2.raw');
    const top = path.join(dir, 'top2.qcow2');
    fs.writeFileSync(base, Buffer.alloc(4 * MiB, 0x42));
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-b', 'base2.raw', '-F', 'raw', top]);
    const img = await openImage(top, { writable: true });
    await img.discard(1 * MiB, 1 * MiB);
    await img.close();
    const mirror = Buffer.alloc(4 * MiB, 0x42);
    mirror.fill(0, 1 * MiB, 2 * MiB);
    expect(qemuCheck(top).ok).toBe(true);
    expect(convertRaw(top).equals(mirror)).toBe(true);
  });
});
