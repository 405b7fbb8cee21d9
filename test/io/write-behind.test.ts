import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { addIoObserver, HostFile } from '../../src/io/host-file';
import type { IoEvent } from '../../src/io/counters';
import { bytesFromEnv, STREAM_WRITE_MIN, WRITE_BEHIND_BYTES, WriteBehind } from '../../src/io/write-behind';

const M = 1 << 20;
let dir: string;
let fd: number;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-wb-'));
  fd = fs.openSync(path.join(dir, 'f'), 'w+');
});
afterEach(() => {
  fs.closeSync(fd);
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A WriteBehind on a real file, every `every` bytes, recording the ranges it started. */
function recorder(every: number, onFd = fd) {
  const started: [number, number][] = [];
  const wb = new WriteBehind(onFd, 'f', (o, l) => started.push([o, l]), every);
  const write = (pos: number, len: number) => {
    if (onFd === fd) fs.writeSync(fd, Buffer.alloc(len, 1), 0, len, pos);
    wb.wrote(pos, len);
  };
  return { wb, started, write };
}

describe('WriteBehind', () => {
  it('starts writeback of the range a stream covered, once per threshold', async () => {
    const { wb, started, write } = recorder(4 * M);
    for (let i = 0; i < 3; i++) write(i * M, M);
    expect(started).toEqual([]);
    write(3 * M, M);
    expect(started).toEqual([[0, 4 * M]]);
    await wb.settled();
    for (let i = 4; i < 8; i++) write(i * M, M);
    // A second range starts only because the first real sync_file_range succeeded (a failure turns it off).
    expect(started).toEqual([
      [0, 4 * M],
      [4 * M, 4 * M],
    ]);
    await wb.settled();
  });

  it('while a call runs, gathers what is written meanwhile into the next one', async () => {
    const { wb, started, write } = recorder(2 * M);
    write(0, M);
    write(M, M); // starts [0, 2M)
    write(10 * M, M);
    write(11 * M, M); // the threshold again, while the first call runs: no second call yet
    await wb.settled();
    write(20 * M, M);
    // The call's completion can only be seen by an await, so the second range is exactly this.
    expect(started).toEqual([
      [0, 2 * M],
      [10 * M, 11 * M],
    ]);
    await wb.settled();
  });

  it('ignores small writes: scattered metadata and random guest writes are not written back early', async () => {
    const { wb, started, write } = recorder(M);
    for (let i = 0; i < 64; i++) write(i * 65536, STREAM_WRITE_MIN - 4096);
    expect(started).toEqual([]);
    await wb.settled();
  });

  it('turns itself off when the call fails, and never throws', async () => {
    const bad = 1 << 20; // no such descriptor: EBADF
    const { wb, started, write } = recorder(M, bad);
    write(0, M);
    expect(started).toEqual([[0, M]]);
    await wb.settled();
    write(M, M);
    write(2 * M, M);
    expect(started).toEqual([[0, M]]);
  });

  it('one call at a time in the whole process: a second file waits for the slot, then sends all it gathered', async () => {
    const a = recorder(M);
    const fd2 = fs.openSync(path.join(dir, 'g'), 'w+');
    try {
      const b = recorder(M, fd2);
      a.write(0, M); // a's call runs
      b.write(0, M);
      b.write(M, M);
      expect(b.started).toEqual([]);
      await a.wb.settled();
      b.write(2 * M, M);
      expect(b.started).toEqual([[0, 3 * M]]);
      await b.wb.settled();
    } finally {
      fs.closeSync(fd2);
    }
  });

  it('starts nothing once stopped (the descriptor is about to close)', async () => {
    const { wb, started, write } = recorder(M);
    await wb.stop();
    write(0, 2 * M);
    expect(started).toEqual([]);
  });

  it('is on by default, every 8 MiB; VDISKFS_WRITE_BEHIND takes a whole number of bytes, 0 turns it off', () => {
    expect(WRITE_BEHIND_BYTES).toBe(8 * M);
    expect(bytesFromEnv(undefined)).toBe(8 * M);
    expect(bytesFromEnv('0')).toBe(0);
    expect(bytesFromEnv(' 4194304 ')).toBe(4 * M);
    for (const bad of ['8M', '', '-1', '1e6', 'x', '99999999999999999999']) expect(bytesFromEnv(bad), bad).toBe(8 * M);
  });
});

describe('HostFile write-behind', () => {
  it('a stream of 1 MiB writes has its first 8 MiB sent to writeback, and close waits for the call', async () => {
    const events: IoEvent[] = [];
    const p = path.join(dir, 'img');
    const stop = addIoObserver((e) => e.path === p && events.push(e));
    try {
      const f = await HostFile.create(p);
      for (let i = 0; i < 10; i++) await f.write(Buffer.alloc(M, i), i * M);
      await f.write(Buffer.alloc(4096, 9), 40 * M); // small: not counted
      await f.close();
      const wb = events.filter((e) => e.kind === 'writeback');
      expect(wb).toEqual([{ kind: 'writeback', path: p, offset: 0, length: 8 * M, tag: undefined }]);
      // It came right after the eighth write.
      expect(events.indexOf(wb[0]!)).toBe(8);
      expect(
        fs
          .readFileSync(p)
          .subarray(9 * M, 10 * M)
          .every((b) => b === 9),
      ).toBe(true);
    } finally {
      stop();
    }
  });
});
