import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { addIoObserver, HostFile, SYNC_CACHED_READ_MAX, SYNC_IO_MAX } from '../../src/io/host-file';
import type { IoEvent } from '../../src/io/counters';
import { readU64, toSafeNumber, writeU64 } from '../../src/io/safe-int';
import { VdiskError } from '../../src/io/errors';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-io-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('HostFile', () => {
  it('reads fully, and past the end of the file as zeros', async () => {
    const p = path.join(dir, 'f');
    fs.writeFileSync(p, Buffer.from('abcdef'));
    const f = await HostFile.open(p, false);
    const buf = Buffer.alloc(10, 0xff);
    expect(await f.read(buf, 2)).toBe(4);
    expect(buf.toString('latin1', 0, 4)).toBe('cdef');
    expect([...buf.subarray(4)]).toEqual([0, 0, 0, 0, 0, 0]);
    await f.close();
  });

  it('writes a vector contiguously, small (synchronous) and large (thread pool) alike', async () => {
    const p = path.join(dir, 'g');
    const f = await HostFile.create(p);
    const big = Buffer.alloc(SYNC_IO_MAX + 4096, 0x42);
    await f.write([Buffer.from('xy'), Buffer.alloc(0), Buffer.from('z')], 10);
    await f.write([big, Buffer.from('!')], 100);
    const back = Buffer.alloc(big.length + 1);
    await f.read(back, 100);
    expect(back.subarray(0, big.length).equals(big)).toBe(true);
    expect(back.toString('latin1', big.length)).toBe('!');
    expect(fs.readFileSync(p).toString('latin1', 10, 13)).toBe('xyz');
    expect(f.counters).toMatchObject({ writes: 2, bytesWritten: 3 + big.length + 1, reads: 1 });
    await f.close();
  });

  it('writes synchronously up to SYNC_IO_MAX, and declines (writing nothing) beyond', async () => {
    const p = path.join(dir, 'sync');
    const f = await HostFile.create(p);
    const events: IoEvent[] = [];
    const stop = addIoObserver((e) => events.push(e));
    try {
      expect(f.writeSync(Buffer.from('hello'), 4090, 'data')).toBe(true);
      expect(f.writeSync(Buffer.alloc(SYNC_IO_MAX + 1, 1), 0, 'data')).toBe(false);
    } finally {
      stop();
    }
    const st = fs.readFileSync(p);
    expect(st.length).toBe(4095);
    expect(st.toString('latin1', 4090)).toBe('hello');
    expect(st.subarray(0, 4090).every((b) => b === 0)).toBe(true);
    expect(f.counters).toMatchObject({ writes: 1, bytesWritten: 5 });
    expect(events.map((e) => [e.kind, e.offset, e.length, e.tag])).toEqual([['write', 4090, 5, 'data']]);
    await f.close();
    const ro = await HostFile.open(p, false);
    expect(() => ro.writeSync(Buffer.from('x'), 0)).toThrow(VdiskError);
    await ro.close();
  });

  it('reads synchronously above SYNC_IO_MAX only what the page cache holds, counting nothing when it declines', async () => {
    const p = path.join(dir, 'cached');
    const data = Buffer.alloc(SYNC_CACHED_READ_MAX + 4096);
    for (let i = 0; i < data.length; i += 512) data.writeUInt32LE(i + 1, i);
    fs.writeFileSync(p, data);
    const f = await HostFile.open(p, false);
    const big = Buffer.alloc(SYNC_CACHED_READ_MAX);
    expect(f.readSync(big, 4096)).toBe(true);
    expect(big.equals(data.subarray(4096))).toBe(true);
    expect(f.counters.reads).toBe(1);
    // Past the largest FUSE request: the thread pool's.
    expect(f.readSync(Buffer.alloc(SYNC_CACHED_READ_MAX + 4096), 0)).toBe(false);
    // Not cached: declined without waiting for the disk, nothing counted; read() still serves it.
    execFileSync('sync');
    execFileSync('dd', [`if=${p}`, 'iflag=nocache', 'count=0', 'status=none']);
    const cold = Buffer.alloc(SYNC_IO_MAX + 4096);
    expect(f.readSync(cold, 0)).toBe(false);
    expect(f.counters.reads).toBe(1);
    await f.read(cold, 0);
    expect(cold.equals(data.subarray(0, cold.length))).toBe(true);
    // A small read stays synchronous whatever the cache holds.
    expect(f.readSync(Buffer.alloc(4096), 8192)).toBe(true);
    await f.close();
  });

  it('tells observers every read, write and flush with its tag, in order', async () => {
    const events: IoEvent[] = [];
    const off = addIoObserver((e) => events.push(e));
    const f = await HostFile.create(path.join(dir, 'h'));
    await f.write(Buffer.alloc(512), 0, 'l2');
    await f.datasync('flush');
    await f.read(Buffer.alloc(512), 0);
    off();
    await f.write(Buffer.alloc(1), 0);
    expect(events.map((e) => `${e.kind}:${e.tag ?? ''}:${e.offset}+${e.length}`)).toEqual([
      'write:l2:0+512',
      'flush:flush:0+0',
      'read::0+512',
    ]);
    await f.close();
  });

  it('turns host errors into VdiskError with the path', async () => {
    await expect(HostFile.open(path.join(dir, 'missing'), false)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(HostFile.open(path.join(dir, 'missing'), false)).rejects.toThrow(/open .*missing/);
    fs.writeFileSync(path.join(dir, 'ro'), 'x');
    const f = await HostFile.open(path.join(dir, 'ro'), false);
    await expect(f.write(Buffer.from('y'), 0)).rejects.toBeInstanceOf(VdiskError);
    await f.close();
  });

  it('never blocks on, and never opens, a FIFO, a device, a folder or a final symlink', async () => {
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    // A blocking open of a FIFO with no writer would hang here (and park a thread-pool thread).
    await expect(HostFile.open(fifo, false)).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/special file/) });
    await expect(HostFile.open('/dev/zero', false)).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(HostFile.open(dir, false)).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/folder/) });
    fs.writeFileSync(path.join(dir, 'real'), 'x');
    fs.symlinkSync('real', path.join(dir, 'link'));
    await expect(HostFile.open(path.join(dir, 'link'), false)).rejects.toMatchObject({ message: expect.stringMatching(/symlink/) });
    const ok = await HostFile.open(path.join(dir, 'real'), true);
    await ok.close();
  });

  it('punches a hole: the range reads zeros, its blocks go back, the size stays', async () => {
    const p = path.join(dir, 'p');
    fs.writeFileSync(p, Buffer.alloc(4 << 20, 0x5a));
    const f = await HostFile.open(p, true);
    const before = (await f.stat()).blocks;
    expect(f.punchHole(1 << 20, 2 << 20, 'data')).toBe(true);
    const buf = Buffer.alloc(4 << 20);
    await f.read(buf, 0);
    await f.close();
    const want = Buffer.alloc(4 << 20, 0x5a);
    want.fill(0, 1 << 20, 3 << 20);
    expect(buf.equals(want)).toBe(true);
    expect(fs.statSync(p).size).toBe(4 << 20);
    expect((before - fs.statSync(p).blocks) * 512).toBeGreaterThanOrEqual(2 << 20);
  });

  it('closes once', async () => {
    const f = await HostFile.create(path.join(dir, 'c'));
    await f.close();
    await f.close();
  });
});

describe('64-bit fields', () => {
  it('are exact up to 2^53 and refused beyond, with the field name', () => {
    const b = Buffer.alloc(8);
    writeU64(b, 0, Number.MAX_SAFE_INTEGER);
    expect(readU64(b, 0, 'x')).toBe(Number.MAX_SAFE_INTEGER);
    b.writeBigUInt64BE(2n ** 60n);
    expect(() => readU64(b, 0, 'l1_table_offset')).toThrow(/l1_table_offset out of range/);
    expect(() => toSafeNumber(-1n, 'y')).toThrow(VdiskError);
    expect(() => writeU64(b, 0, 2 ** 60)).toThrow(VdiskError);
  });
});
