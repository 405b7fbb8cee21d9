/**
 * Header feature handling: corrupt bit (read-only + warning), unknown incompatible bits (refused,
 * naming the bit), dirty bit with lazy refcounts (rebuilt before any write), autoclear bits
 * cleared on a writable open with the bitmap directory kept intact, and check()/repair.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { qcow2Driver } from '../../../src/formats/qcow2';
import { openImage } from '../../../src/image/open';
import { qemuCheck, qemuCompare, qemuImg, qemuIo, qemuRaw } from '../../helpers/qemu';
import { readAll, tempDir } from './helpers';
import { reachAnywhere } from '../../helpers/reach';

const dir = tempDir('features');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

function patch(file: string, at: number, bytes: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, bytes, 0, bytes.length, at);
  fs.closeSync(fd);
}
function u64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
}
function headerU64(file: string, at: number): bigint {
  const b = Buffer.alloc(8);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, b, 0, 8, at);
  fs.closeSync(fd);
  return b.readBigUInt64BE();
}
const noop = {
  openBacking: async () => {
    throw new Error('no backing');
  },
  reach: reachAnywhere,
  warn: () => undefined,
};

describe('qcow2 feature bits', () => {
  it('corrupt bit: writable open falls back to read-only and says why', async () => {
    const f = path.join(dir, 'corrupt.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '4M']);
    qemuIo(f, ['write -P 0x31 0 64k']);
    patch(f, 72, u64(2n));
    const warnings: string[] = [];
    const img = await openImage(f, { writable: true, warn: (m) => warnings.push(m) });
    expect(img.readOnly).toBe(true);
    expect(warnings.join('\n')).toMatch(/corrupt bit/);
    await expect(img.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'EROFS' });
    const b = Buffer.alloc(512);
    await img.read(0, b);
    expect(b[0]).toBe(0x31);
    await img.close();
  });

  it('unknown incompatible feature bit: refused with ENOTSUP naming the bit', async () => {
    const f = path.join(dir, 'unknown.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '4M']);
    patch(f, 72, u64(1n << 9n));
    await expect(openImage(f, { writable: false })).rejects.toMatchObject({ code: 'ENOTSUP', message: expect.stringMatching(/bit 9/) });
  });

  it('dirty bit (lazy refcounts, killed writer): writable open rebuilds refcounts before writing', async () => {
    const f = path.join(dir, 'dirty.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', f, '8M']);
    try {
      execFileSync('qemu-io', ['-c', 'write -P 0x5a 0 1M', '-c', 'sigraise 9', f], { stdio: 'ignore' });
    } catch {
      // killed on purpose
    }
    expect(headerU64(f, 72) & 1n).toBe(1n);
    expect(qemuCheck(f).ok).toBe(false);
    const warnings: string[] = [];
    const img = await openImage(f, { writable: true, warn: (m) => warnings.push(m) });
    expect(warnings.join('\n')).toMatch(/dirty/);
    const info = await img.info();
    expect(info['dirty-flag']).toBe(false);
    await img.write(2 * MiB, Buffer.alloc(MiB, 0x6b));
    await img.close();
    expect(headerU64(f, 72) & 1n).toBe(0n);
    const check = qemuCheck(f);
    expect(check.ok, check.output).toBe(true);
    const mirror = Buffer.alloc(8 * MiB);
    mirror.fill(0x5a, 0, MiB);
    mirror.fill(0x6b, 2 * MiB, 3 * MiB);
    fs.writeFileSync(`${f}.mirror`, mirror);
    expect(qemuCompare(f, `${f}.mirror`).equal).toBe(true);
  });

  it('autoclear bits cleared on writable open; bitmap directory extension kept byte for byte', async () => {
    const f = path.join(dir, 'bitmap.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '8M']);
    qemuImg(['bitmap', '--add', f, 'bm0']);
    expect(headerU64(f, 88)).toBe(1n);
    const before = fs.readFileSync(f).subarray(112, 4096);
    const img = await openImage(f, { writable: true });
    await img.write(0, Buffer.alloc(65536, 1));
    await img.close();
    expect(headerU64(f, 88)).toBe(0n);
    expect(fs.readFileSync(f).subarray(112, 4096).equals(before)).toBe(true);
    // QEMU now treats the bitmaps as stale (as the spec intends); only their clusters leak.
    const check = qemuCheck(f);
    expect(check.json?.['corruptions'] ?? 0).toBe(0);
    expect(check.json?.['check-errors'] ?? 0).toBe(0);
  });

  it('check(): clean image, then a leak and a missing refcount are found; repair fixes both', async () => {
    const f = path.join(dir, 'check.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '8M']);
    qemuIo(f, ['write -P 0x11 0 1M']);
    expect(await qcow2Driver.check!(f, { ...noop, writable: false, repair: false })).toMatchObject({ errors: 0, leaks: 0, corruptions: 0 });
    // Refcount block is at cluster 2 (16-bit entries): leak cluster 100 (beyond everything, refcount 1)
    // and drop the refcount of the first data cluster (cluster 5) to 0.
    const rb = Number(headerU64(f, 48)) + 0;
    const tableEntry = Buffer.alloc(8);
    const fd = fs.openSync(f, 'r');
    fs.readSync(fd, tableEntry, 0, 8, rb);
    fs.closeSync(fd);
    const block = Number(tableEntry.readBigUInt64BE());
    const size = fs.statSync(f).size;
    fs.truncateSync(f, size + 64 * 65536);
    patch(f, block + 2 * Math.floor(size / 65536 + 10), Buffer.from([0, 1]));
    patch(f, block + 2 * 5, Buffer.from([0, 0]));
    const bad = await qcow2Driver.check!(f, { ...noop, writable: false, repair: false });
    expect(bad.leaks).toBe(1);
    expect(bad.corruptions).toBeGreaterThanOrEqual(1);
    const q = qemuCheck(f);
    expect(q.ok).toBe(false);
    expect(q.output).toMatch(/"leaks": 1\b/);
    const fixed = await qcow2Driver.check!(f, { ...noop, writable: true, repair: true });
    expect(fixed).toMatchObject({ leaks: 0, corruptions: 0 });
    expect(fixed.repaired).toBeGreaterThan(0);
    const after = qemuCheck(f);
    expect(after.ok, after.output).toBe(true);
  });
});

describe('qcow2 resize', () => {
  for (const [name, opts, from, to] of [
    ['L1 grows in place', 'cluster_size=4096', 8 * MiB, 40 * MiB],
    ['L1 is moved (512-byte clusters)', 'cluster_size=512', 2 * MiB, 40 * MiB],
    ['empty L1 (size 0)', 'cluster_size=65536', 0, 4 * MiB],
  ] as const) {
    it(name, async () => {
      const f = path.join(dir, `resize-${from}-${to}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', opts, f, String(from)]);
      if (from) qemuIo(f, [`write -P 0x44 0 ${from / 2}`]);
      const img = await openImage(f, { writable: true });
      await img.resize!(to);
      expect(img.virtualSize).toBe(to);
      await img.write(to - 3 * 65536 - 5, Buffer.alloc(65536 * 2, 0x55));
      await img.flush();
      expect(qemuCheck(f).ok).toBe(true); // consistent while still open (flushed)
      await expect(img.resize!(to - 512)).rejects.toMatchObject({ code: 'EINVAL' });
      await expect(img.resize!(to + 100)).rejects.toMatchObject({ code: 'EINVAL' }); // not whole sectors (QEMU refuses too)
      await img.close();
      const check = qemuCheck(f);
      expect(check.ok, check.output).toBe(true);
      const mirror = Buffer.alloc(to);
      mirror.fill(0x44, 0, from / 2);
      mirror.fill(0x55, to - 3 * 65536 - 5, to - 65536 - 5);
      fs.writeFileSync(`${f}.mirror`, mirror);
      expect(qemuCompare(f, `${f}.mirror`).equal).toBe(true);
      const ro = await openImage(f, { writable: false });
      expect((await readAll(ro, 4 * MiB)).equals(mirror)).toBe(true);
      await ro.close();
      fs.rmSync(`${f}.mirror`);
    });
  }

  it('raw view of a grown image equals qemu-img convert', async () => {
    const f = path.join(dir, 'resize-raw.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '1M']);
    const img = await openImage(f, { writable: true });
    await img.resize!(3 * MiB + 512);
    await img.write(3 * MiB, Buffer.alloc(512, 9));
    await img.close();
    const raw = fs.readFileSync(qemuRaw(f));
    expect(raw.length).toBe(3 * MiB + 512);
    expect(raw[3 * MiB]).toBe(9);
  });
});

describe('qcow2 extended L2 writes', () => {
  it('a partial write over a backing file allocates only the touched subclusters (no whole-cluster COW)', async () => {
    const base = path.join(dir, 'sub-base.raw');
    fs.writeFileSync(base, Buffer.alloc(4 * MiB, 0x77));
    const f = path.join(dir, 'sub.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, '-o', 'extended_l2=on,cluster_size=64k', f, '4M']);
    const img = await openImage(f, { writable: true });
    const before = img.stats().io[f]!.bytesWritten;
    await img.write(65536 + 8192 + 100, Buffer.alloc(3000, 0x11)); // subclusters 4 and 5 (2 KiB each)
    const dataBytes = img.stats().io[f]!.bytesWritten - before;
    expect(dataBytes).toBe(4096); // the two subclusters, COW only to their edges
    await img.write(65536 + 30000, Buffer.alloc(10, 0x12)); // same cluster, another subcluster, in place
    expect(img.stats().driver['allocatedClusters']).toBe(2); // one data cluster + one L2 table
    await img.close();
    const map = JSON.parse(qemuImg(['map', '--output=json', f])) as { start: number; length: number; depth: number }[];
    const top = map.filter((m) => m.depth === 0);
    expect(top).toEqual([
      expect.objectContaining({ start: 65536 + 8192, length: 4096 }),
      expect.objectContaining({ start: 65536 + 28672, length: 2048 }),
    ]);
    const mirror = Buffer.alloc(4 * MiB, 0x77);
    mirror.fill(0x11, 65536 + 8192 + 100, 65536 + 8192 + 3100);
    mirror.fill(0x12, 65536 + 30000, 65536 + 30010);
    fs.writeFileSync(`${f}.mirror`, mirror);
    expect(qemuCheck(f).ok).toBe(true);
    expect(qemuCompare(f, `${f}.mirror`).equal).toBe(true);
  });
});

describe('qcow2 writeZeroes over allocated clusters', () => {
  for (const opts of ['', 'extended_l2=on']) {
    it(`keeps the host cluster (preallocated zero cluster) and reuses it on the next write${opts ? ' (extended L2)' : ''}`, async () => {
      const f = path.join(dir, `zalloc${opts ? '-ext' : ''}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), f, '4M']);
      const img = await openImage(f, { writable: true });
      await img.write(0, Buffer.alloc(4 * 65536, 0x21));
      const allocated = img.stats().driver['allocatedClusters'];
      await img.writeZeroes(65536, 2 * 65536);
      const z = Buffer.alloc(2 * 65536, 1);
      await img.read(65536, z);
      expect(z.every((x) => x === 0)).toBe(true);
      await img.flush();
      expect(qemuCheck(f).ok).toBe(true);
      await img.write(65536 + 1000, Buffer.alloc(100, 0x22));
      await img.write(2 * 65536, Buffer.alloc(65536, 0x23));
      expect(img.stats().driver['allocatedClusters']).toBe(allocated);
      await img.close();
      const mirror = Buffer.alloc(4 * MiB);
      mirror.fill(0x21, 0, 65536);
      mirror.fill(0x22, 65536 + 1000, 65536 + 1100);
      mirror.fill(0x23, 2 * 65536, 3 * 65536);
      mirror.fill(0x21, 3 * 65536, 4 * 65536);
      fs.writeFileSync(`${f}.mirror`, mirror);
      const check = qemuCheck(f);
      expect(check.ok, check.output).toBe(true);
      expect(qemuCompare(f, `${f}.mirror`).equal).toBe(true);
    });
  }
});

describe('qcow2 check repair of COPIED flags', () => {
  it('a data cluster with a wrong COPIED flag is reported and repaired', async () => {
    const f = path.join(dir, 'copied.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '4M']);
    qemuIo(f, ['write -P 0x15 0 128k']);
    const l1 = Number(headerU64(f, 40));
    const l2 = Number(headerU64(f, l1) & 0x00fffffffffffe00n);
    const fd = fs.openSync(f, 'r+');
    const w = Buffer.alloc(4);
    fs.readSync(fd, w, 0, 4, l2);
    w.writeUInt32BE((w.readUInt32BE(0) & 0x7fffffff) >>> 0);
    fs.writeSync(fd, w, 0, 4, l2);
    fs.closeSync(fd);
    expect(qemuCheck(f).ok).toBe(false);
    const bad = await qcow2Driver.check!(f, { ...noop, writable: false, repair: false });
    expect(bad.corruptions).toBe(1);
    const fixed = await qcow2Driver.check!(f, { ...noop, writable: true, repair: true });
    expect(fixed).toMatchObject({ corruptions: 0, leaks: 0 });
    const q = qemuCheck(f);
    expect(q.ok, q.output).toBe(true);
  });
});

describe('qcow2 lazy refcounts', () => {
  it('dirty bit set while refcounts may be stale, cleared on close; a crash copy is rebuilt on open', async () => {
    const f = path.join(dir, 'lazy-session.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', f, '8M']);
    const img = await openImage(f, { writable: true });
    await img.write(0, Buffer.alloc(3 * MiB, 0x41));
    const flushesBefore = img.stats().driver['hostFlushes']!;
    await img.flush();
    expect(headerU64(f, 72) & 1n).toBe(1n);
    expect((await img.info())['dirty-flag']).toBe(true);
    // A crash now: copy the file as it is on disk.
    const crashed = path.join(dir, 'lazy-crashed.qcow2');
    fs.copyFileSync(f, crashed);
    await img.write(4 * MiB, Buffer.alloc(MiB, 0x42));
    const second = img.stats().driver['hostFlushes']!;
    await img.flush();
    expect(img.stats().driver['hostFlushes']! - second).toBe(2); // refcount blocks and data, one datasync (none for the refcounts alone), L2 table, final datasync
    expect(second - flushesBefore).toBe(3); // first flush: dirty bit (also the data barrier), L2 before L1, final
    await img.close();
    expect(headerU64(f, 72) & 1n).toBe(0n);
    expect(qemuCheck(f).ok).toBe(true);
    const warnings: string[] = [];
    const re = await openImage(crashed, { writable: true, warn: (m) => warnings.push(m) });
    expect(warnings.join()).toMatch(/dirty/);
    const b = Buffer.alloc(3 * MiB);
    await re.read(0, b);
    expect(b.every((x) => x === 0x41)).toBe(true);
    await re.close();
    const check = qemuCheck(crashed);
    expect(check.ok, check.output).toBe(true);
  });
});
