/**
 * Hostile and broken images: every one is refused (or its bad part fails to read) with a
 * VdiskError carrying a clear code, never a crash, a hang or an absurd allocation.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { VdiskError } from '../../../src/io/errors';
import { openImage } from '../../../src/image/open';
import { qemuImg, qemuIo } from '../../helpers/qemu';
import { tempDir } from './helpers';

const dir = tempDir('hostile');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let n = 0;
function image(opts = '', size = '4M', data = true): string {
  const f = path.join(dir, `h${n++}.qcow2`);
  qemuImg(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), f, size]);
  if (data) qemuIo(f, ['write -P 0x42 0 128k']);
  return f;
}
function patch(file: string, at: number, bytes: number[] | Buffer): void {
  const b = Buffer.from(bytes);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, b, 0, b.length, at);
  fs.closeSync(fd);
}
function u32(v: number): number[] {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return [...b];
}
function u64(v: bigint): number[] {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return [...b];
}
function readU64(file: string, at: number): number {
  const b = Buffer.alloc(8);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, b, 0, 8, at);
  fs.closeSync(fd);
  return Number(b.readBigUInt64BE());
}

async function openFails(f: string, code: string, msg?: RegExp): Promise<void> {
  const rss = process.memoryUsage().rss;
  const e = await openImage(f, { writable: false, warn: () => undefined }).then(
    async (img) => {
      await img.close();
      return undefined;
    },
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(VdiskError);
  expect((e as VdiskError).code).toBe(code);
  if (msg) expect((e as VdiskError).message).toMatch(msg);
  expect(process.memoryUsage().rss - rss).toBeLessThan(128 << 20);
}

async function readFails(f: string, code: string): Promise<void> {
  const img = await openImage(f, { writable: false });
  try {
    await expect(img.read(0, Buffer.alloc(65536))).rejects.toMatchObject({ code });
  } finally {
    await img.close();
  }
}

describe('qcow2 hostile images', () => {
  it('truncated header', async () => {
    const f = path.join(dir, 'trunc.qcow2');
    fs.writeFileSync(f, Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]));
    await openFails(f, 'ECORRUPT');
  });
  it('cluster_bits out of range', async () => {
    const f = image();
    patch(f, 20, u32(30));
    await openFails(f, 'ECORRUPT', /cluster_bits/);
  });
  it('L1 size too big (QEMU limit)', async () => {
    const f = image();
    patch(f, 36, u32(0x7fffffff));
    await openFails(f, 'ECORRUPT', /L1 size too big/);
  });
  it('L1 too small for the disk size', async () => {
    const f = image();
    patch(f, 24, u64(1n << 40n));
    await openFails(f, 'ECORRUPT', /L1 table too small/);
  });
  it('misaligned L1 / refcount table offsets', async () => {
    const a = image();
    patch(a, 40, u64(0x30200n));
    await openFails(a, 'ECORRUPT', /l1_table_offset/);
    const b = image();
    patch(b, 48, u64(0x10001n));
    await openFails(b, 'ECORRUPT', /refcount_table_offset/);
  });
  it('refcount table larger than QEMU allows', async () => {
    const f = image();
    patch(f, 56, u32(0x100000));
    await openFails(f, 'ECORRUPT', /refcount table too big/);
  });
  it('too many snapshots', async () => {
    const f = image();
    patch(f, 60, u32(70000));
    await openFails(f, 'ECORRUPT', /snapshots/);
  });
  it('encryption and unknown versions are refused as unsupported', async () => {
    const a = image();
    patch(a, 32, u32(1));
    await openFails(a, 'ENOTSUP', /encryption/);
    const b = image();
    patch(b, 4, u32(4));
    await openFails(b, 'ENOTSUP', /version 4/);
  });
  it('header_length beyond the first cluster', async () => {
    const f = image('cluster_size=512', '1M');
    patch(f, 100, u32(4096));
    await openFails(f, 'ECORRUPT');
  });
  it('backing file that is the image itself', async () => {
    const f = image();
    const g = path.join(dir, 'self.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', f, g]);
    fs.copyFileSync(g, f); // f now names itself as backing
    await openFails(f, 'ECORRUPT', /loop/);
  });
  it('missing backing file', async () => {
    const f = path.join(dir, 'orphan.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', 'nowhere.raw', '-u', f, '1M']);
    await openFails(f, 'ENOENT');
  });
  it('misaligned L2 table offset in the L1 table: reading it fails, the rest still reads', async () => {
    const f = image('', '1G');
    qemuIo(f, ['write -P 0x43 600M 64k']);
    const l1 = readU64(f, 40);
    patch(f, l1, u64((1n << 63n) | 0x10200n));
    await readFails(f, 'ECORRUPT');
    const img = await openImage(f, { writable: false });
    const b = Buffer.alloc(512);
    await img.read(600 * 1024 * 1024, b);
    expect(b[0]).toBe(0x43);
    await img.close();
  });
  it('compressed cluster with garbage bytes', async () => {
    const src = image();
    const f = path.join(dir, 'cgarbage.qcow2');
    qemuImg(['convert', '-c', '-O', 'qcow2', src, f]);
    const map = JSON.parse(qemuImg(['map', '--output=json', f])) as { data: boolean; offset?: number }[];
    const l1 = readU64(f, 40);
    const l2 = readU64(f, l1) % 2 ** 56;
    const entry = readU64(f, l2) % 2 ** 54; // compressed offset bits for 64 KiB clusters
    patch(f, entry, Buffer.alloc(64, 0xff));
    expect(map.length).toBeGreaterThan(0);
    await readFails(f, 'ECORRUPT');
  });
  it('extended L2 subcluster both allocated and zero', async () => {
    const f = image('extended_l2=on');
    const l1 = readU64(f, 40);
    const l2 = readU64(f, l1) % 2 ** 56;
    patch(f, l2 + 8, u64(0x00000001_00000001n));
    await readFails(f, 'ECORRUPT');
  });
  it('huge virtual size opens without huge allocations and reads its last byte', async () => {
    const f = path.join(dir, 'huge.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M', f, '1P']);
    const rss = process.memoryUsage().rss;
    const img = await openImage(f, { writable: true });
    const b = Buffer.alloc(1, 9);
    await img.read(img.virtualSize - 1, b);
    expect(b[0]).toBe(0);
    await img.write(img.virtualSize - 1, Buffer.from([7]));
    await img.read(img.virtualSize - 1, b);
    expect(b[0]).toBe(7);
    await expect(img.read(img.virtualSize, Buffer.alloc(1))).rejects.toMatchObject({ code: 'EINVAL' });
    await img.close();
    expect(process.memoryUsage().rss - rss).toBeLessThan(128 << 20);
  });
});

describe('qcow2 hostile images opened for writing', () => {
  it('an L2 table offset past the end of the file is refused on write (not written out there)', async () => {
    const f = image();
    const l1 = readU64(f, 40);
    patch(f, l1, u64((1n << 63n) | (1n << 45n)));
    const img = await openImage(f, { writable: true });
    await expect(img.write(0, Buffer.alloc(4096, 1))).rejects.toMatchObject({ code: 'ECORRUPT' });
    await img.close();
    expect(fs.statSync(f).size).toBeLessThan(1 << 20);
  });
  it('a refcount block past the end of the file is refused on a writable open', async () => {
    const f = image();
    const rt = readU64(f, 48);
    patch(f, rt + 8, u64(1n << 45n));
    await expect(openImage(f, { writable: true })).rejects.toMatchObject({ code: 'ECORRUPT' });
  });
});

describe('qcow2 old layouts', () => {
  it('a v2 image whose backing file name follows the header directly (no extension area)', async () => {
    const base = path.join(dir, 'old-base.raw');
    fs.writeFileSync(base, Buffer.alloc(1 << 20, 0x3d));
    const f = path.join(dir, 'old.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-F', 'raw', '-b', base, f]);
    qemuIo(f, ['write -P 0x3e 4096 4096']);
    // Rewrite cluster 0 the old way: name at byte 72, no extensions.
    const c0 = Buffer.alloc(512);
    const fd = fs.openSync(f, 'r+');
    fs.readSync(fd, c0, 0, 72, 0);
    c0.writeBigUInt64BE(72n, 8);
    c0.writeUInt32BE(Buffer.byteLength(base), 16);
    c0.write(base, 72);
    fs.writeSync(fd, c0, 0, 512, 0);
    fs.closeSync(fd);
    const img = await openImage(f, { writable: false });
    const b = Buffer.alloc(8192);
    await img.read(0, b);
    expect(b[0]).toBe(0x3d);
    expect(b[4096]).toBe(0x3e);
    expect((await img.info())['backing-filename']).toBe(base);
    await img.close();
  });
});
