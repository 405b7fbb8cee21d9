/**
 * One test (or a few) per rule of DESIGN.md's merger contract, against the in-memory ModelImage.
 */
import { describe, expect, it } from 'vitest';
import { RequestMerger } from '../../src/merge';
import { VdiskError } from '../../src/io/errors';
import { ModelImage } from './model-image';

const MiB = 1 << 20;

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 7 + 1) & 0xff || 1;
  return b;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const turn = () => new Promise((r) => setImmediate(r));

describe('rule 1: driver requests are 4 KiB-aligned, except one ending at the disk end', () => {
  it('turns unaligned writes into read-modify-write of the boundary pages', async () => {
    const img = new ModelImage(MiB);
    img.data.fill(0xee);
    const m = new RequestMerger(img, { delayMs: 1000 });
    await m.write(100, pattern(5000, 1));
    await m.write(70_000, pattern(3, 2));
    await m.flush();
    expect(img.violations).toEqual([]);
    const writes = img.log('write');
    expect(writes.map((r) => [r.offset, r.length])).toEqual([
      [0, 8192],
      [69632, 4096],
    ]);
    expect(m.stats().rmwReads).toBe(3); // head+tail of the first, one page for the second
    const expected = Buffer.alloc(MiB, 0xee);
    pattern(5000, 1).copy(expected, 100);
    pattern(3, 2).copy(expected, 70_000);
    expect(img.data.equals(expected)).toBe(true);
  });

  it('sends a short request at the end of a disk whose size is not page-aligned', async () => {
    const size = 3 * 4096 + 1000;
    const img = new ModelImage(size);
    const m = new RequestMerger(img);
    await m.write(size - 10, pattern(10, 3));
    await m.flush();
    expect(img.violations).toEqual([]);
    expect(img.log('write').map((r) => [r.offset, r.length])).toEqual([[3 * 4096, 1000]]);
    const into = Buffer.alloc(50, 0xaa);
    expect(await m.read(size - 20, into)).toBe(20);
    expect(into.subarray(10, 20).equals(pattern(10, 3))).toBe(true);
    expect(into.subarray(20).every((b) => b === 0)).toBe(true); // past the end: zero-filled
    expect(img.violations).toEqual([]);
  });

  it('refuses writes past the end with EINVAL and serves reads past the end as empty', async () => {
    const img = new ModelImage(8192);
    const m = new RequestMerger(img);
    await expect(m.write(8000, Buffer.alloc(200))).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(m.write(-1, Buffer.alloc(1))).rejects.toMatchObject({ code: 'EINVAL' });
    expect(await m.read(9000, Buffer.alloc(10))).toBe(0);
    expect(img.requests).toEqual([]);
  });
});

describe('rule 2: writes coalesce; extents go out at maxBytes, idle, flush, overlapping read, memory cap', () => {
  it('merges 256 sequential 4 KiB writes into one 1 MiB driver write', async () => {
    const img = new ModelImage(4 * MiB);
    const m = new RequestMerger(img, { delayMs: 10_000 });
    for (let i = 0; i < 256; i++) await m.write(i * 4096, pattern(4096, i));
    expect(img.log('write')).toHaveLength(1); // sent by the write that filled it, not by drain
    await m.write(MiB, pattern(4096, 256));
    expect(m.stats().pendingBytes).toBe(4096);
    await m.drain();
    expect(img.log('write').map((r) => [r.offset, r.length])).toEqual([
      [0, MiB],
      [MiB, 4096],
    ]);
    expect(m.stats()).toMatchObject({ mergedWrites: 257, coalescedWrites: 255, driverWrites: 2, rmwReads: 0, pendingBytes: 0 });
  });

  it('coalesces overlapping and adjacent unaligned writes into one extent, the later bytes winning', async () => {
    const img = new ModelImage(MiB);
    const m = new RequestMerger(img, { delayMs: 10_000 });
    await m.write(1000, Buffer.alloc(3000, 1));
    await m.write(4000, Buffer.alloc(5000, 2)); // abuts
    await m.write(2000, Buffer.alloc(1000, 3)); // overlaps
    await m.write(20_000, Buffer.alloc(10, 4)); // separate
    expect(m.stats()).toMatchObject({ pendingExtents: 2, pendingBytes: 8000 + 10 });
    await m.drain();
    expect(img.log('write').map((r) => [r.offset, r.length])).toEqual([
      [0, 12288],
      [16384, 4096],
    ]);
    expect(img.data[1500]).toBe(1);
    expect(img.data[2500]).toBe(3);
    expect(img.data[8999]).toBe(2);
    expect(img.data[9000]).toBe(0);
    expect(img.data[20_005]).toBe(4);
  });

  it('sends pending extents after delayMs of idle time', async () => {
    const img = new ModelImage(MiB);
    const m = new RequestMerger(img, { delayMs: 5 });
    await m.write(0, pattern(4096, 1));
    expect(img.log('write')).toHaveLength(0);
    await sleep(40);
    expect(img.log('write')).toHaveLength(1);
    expect(m.stats().pendingBytes).toBe(0);
  });

  it('keeps a stream pending while it is busy (no idle flush in the middle of it)', async () => {
    const img = new ModelImage(MiB);
    const m = new RequestMerger(img, { delayMs: 30 });
    for (let i = 0; i < 8; i++) {
      await m.write(i * 4096, pattern(4096, i));
      await sleep(8);
    }
    expect(img.log('write')).toHaveLength(0);
    await sleep(100);
    expect(img.log('write').map((r) => [r.offset, r.length])).toEqual([[0, 8 * 4096]]);
  });

  it('sends a pending extent when a read overlaps it', async () => {
    const img = new ModelImage(MiB);
    const m = new RequestMerger(img, { delayMs: 10_000 });
    await m.write(8192, pattern(4096, 5));
    await m.write(65536, pattern(4096, 6));
    await m.read(9000, Buffer.alloc(10));
    expect(img.log('write').map((r) => r.offset)).toEqual([8192]);
    expect(m.stats().pendingBytes).toBe(4096);
  });

  it('sends everything and makes the writer wait when pending bytes pass the memory cap', async () => {
    const img = new ModelImage(4 * MiB, { delay: () => 2 });
    const m = new RequestMerger(img, { delayMs: 10_000, memCapBytes: 64 * 1024, maxBytes: MiB });
    for (let i = 0; i < 20; i++) await m.write(i * 8192, pattern(4096, i)); // 20 separate extents
    expect(m.stats().pendingBytes + m.stats().inflightBytes).toBeLessThanOrEqual(64 * 1024);
    expect(img.log('write').length).toBeGreaterThanOrEqual(16);
  });

  it('trickles scattered writes to the driver past 1 MiB pending, oldest first, leaving a busy stream whole', async () => {
    const img = new ModelImage(64 * MiB);
    const m = new RequestMerger(img, { delayMs: 10_000 });
    const expected = Buffer.alloc(64 * MiB);
    const streamAt = 48 * MiB;
    let streamPages = 0;
    // 1200 scattered pages (never adjacent), and one page of a sequential stream after every sixth.
    for (let i = 0; i < 1200; i++) {
      const off = ((i * 7919) % 6144) * 2 * 4096; // distinct even pages below 48 MiB
      const data = pattern(4096, i);
      await m.write(off, data);
      await turn(); // where no request loop runs, the trickle goes on at event-loop turns
      data.copy(expected, off);
      if (i % 6 === 5) {
        const s = pattern(4096, 5000 + streamPages);
        await m.write(streamAt + streamPages * 4096, s);
        s.copy(expected, streamAt + streamPages * 4096);
        streamPages++;
      }
    }
    // The backlog stayed near the threshold instead of growing to the 64 MiB cap...
    expect(m.stats().pendingBytes).toBeLessThanOrEqual(MiB + 300 * 4096);
    await sleep(50); // the sent ones start as driver slots free up (8 at a time)
    const beforeFlush = img.log('write');
    expect(beforeFlush.length).toBeGreaterThan(600);
    // ...and was sent oldest first: the first write to go out is the first one made.
    expect(beforeFlush[0]!.offset).toBe(0);
    // The stream (200 pages, under maxBytes) was written all along: none of it went out yet.
    expect(beforeFlush.filter((r) => r.offset >= streamAt)).toEqual([]);
    await m.flush();
    expect(img.violations).toEqual([]);
    expect(
      img
        .log('write')
        .filter((r) => r.offset >= streamAt)
        .map((r) => r.length),
    ).toEqual([streamPages * 4096]);
    expect(img.data.equals(expected)).toBe(true);
  });

  it('keeps the partial last page pending when a stream hits maxBytes (no double RMW)', async () => {
    const img = new ModelImage(MiB);
    const m = new RequestMerger(img, { delayMs: 10_000, maxBytes: 64 * 1024 });
    for (let i = 0; i < 64; i++) await m.write(100 + i * 4096, pattern(4096, i)); // unaligned stream, 256 KiB
    await m.drain();
    expect(img.violations).toEqual([]);
    expect(m.stats().rmwReads).toBe(2); // only the head of the first and the tail of the last extent
    const expected = Buffer.alloc(MiB);
    for (let i = 0; i < 64; i++) pattern(4096, i).copy(expected, 100 + i * 4096);
    expect(img.data.equals(expected)).toBe(true);
  });
});

describe('rule 3: reads see every acknowledged write', () => {
  it('returns pending bytes merged with the driver content around them', async () => {
    const img = new ModelImage(MiB);
    img.data.fill(0x55);
    const m = new RequestMerger(img, { delayMs: 10_000 });
    await m.write(5000, Buffer.alloc(100, 0x77));
    const got = Buffer.alloc(300);
    await m.read(4900, got);
    expect([...got.subarray(0, 100)].every((b) => b === 0x55)).toBe(true);
    expect([...got.subarray(100, 200)].every((b) => b === 0x77)).toBe(true);
    expect([...got.subarray(200)].every((b) => b === 0x55)).toBe(true);
  });

  it('sees a write that is still in flight in the driver', async () => {
    const img = new ModelImage(MiB, { delay: (r) => (r.kind === 'write' ? 30 : 0) });
    const m = new RequestMerger(img, { delayMs: 10_000, maxBytes: 4096 });
    await m.write(0, Buffer.alloc(4096, 9)); // reaches maxBytes: sent, in flight for 30 ms
    expect(m.stats().inflightBytes).toBe(4096);
    const got = Buffer.alloc(4096);
    await m.read(0, got);
    expect(got.every((b) => b === 9)).toBe(true);
    expect(img.violations).toEqual([]);
  });
});

describe('rule 4: overlapping writes keep their order', () => {
  it('a later write wins over an earlier one still in flight, and they never overlap in the driver', async () => {
    const img = new ModelImage(MiB, { delay: (r) => (r.kind === 'write' && r.seq === 0 ? 40 : 1) });
    const m = new RequestMerger(img, { delayMs: 10_000, maxBytes: 8192 });
    await m.write(0, Buffer.alloc(8192, 1)); // sent at once, slow
    await m.write(4000, Buffer.alloc(200, 2), { writeThrough: true }); // same page, must wait
    await m.write(4096, Buffer.alloc(8192, 3)); // overlaps the first, sent at maxBytes
    await m.flush();
    expect(img.violations).toEqual([]);
    expect(img.data[100]).toBe(1);
    expect(img.data[4050]).toBe(2);
    expect(img.data[4095]).toBe(2);
    expect(img.data[4096]).toBe(3);
    expect(img.data[12_287]).toBe(3);
  });

  it('concurrent callers writing one page: issue order decides', async () => {
    const img = new ModelImage(64 * 1024, { delay: () => 1 });
    const m = new RequestMerger(img, { delayMs: 0, maxBytes: 4096 });
    const ps: Promise<void>[] = [];
    for (let i = 1; i <= 50; i++) ps.push(m.write((i * 37) % 3000, Buffer.alloc(1000, i), { writeThrough: i % 3 === 0 }));
    await Promise.all(ps);
    await m.flush();
    const expected = Buffer.alloc(64 * 1024);
    for (let i = 1; i <= 50; i++) expected.fill(i, (i * 37) % 3000, ((i * 37) % 3000) + 1000);
    expect(img.violations).toEqual([]);
    expect(img.data.equals(expected)).toBe(true);
  });
});

describe('rule 5: a failed deferred write fails the next write, flush and fsync with EIO', () => {
  // Both ways a deferred extent reaches the driver: its async write(), and writeSync when the driver can write at once.
  it.each([
    ['an async driver write', false],
    ['a synchronous driver write', true],
  ])('reports EIO with the range, stays sticky, never loses the failure silently (%s)', async (_, sync) => {
    const warnings: string[] = [];
    const img = new ModelImage(MiB, {
      fail: (r) => (r.kind === 'write' && r.offset === 8192 ? new Error('disk on fire') : undefined),
      syncWrites: sync ? () => true : undefined,
    });
    const m = new RequestMerger(img, { delayMs: 10_000, warn: (s) => warnings.push(s) });
    await m.write(8192, Buffer.alloc(4096, 1)); // acknowledged, deferred
    await m.write(65536, Buffer.alloc(4096, 2));
    const err = await m.flush().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VdiskError);
    expect((err as VdiskError).code).toBe('EIO');
    expect((err as VdiskError).message).toContain('8192-12288');
    expect(warnings.join('\n')).toContain('bytes 8192-12288');
    expect(img.data[65536]).toBe(2); // the healthy extent still reached the driver
    await expect(m.write(0, Buffer.alloc(10))).rejects.toMatchObject({ code: 'EIO' });
    await expect(m.flush()).rejects.toMatchObject({ code: 'EIO' }); // sticky
    await expect(m.read(8192, Buffer.alloc(10))).rejects.toMatchObject({ code: 'EIO' });
    expect(await m.read(65536, Buffer.alloc(10))).toBe(10); // other ranges still readable
    await expect(m.close()).rejects.toMatchObject({ code: 'EIO' });
    expect(img.closed).toBe(true);
    expect(img.syncWriteCount).toBe(sync ? 1 : 0); // the healthy extent; the failed one threw
  });

  it('a failed write-through is returned to its caller and is not sticky', async () => {
    let failNext = true;
    const img = new ModelImage(MiB, {
      fail: (r) => (r.kind === 'write' && failNext ? ((failNext = false), new Error('once')) : undefined),
    });
    const m = new RequestMerger(img, { merge: false });
    await expect(m.write(0, Buffer.alloc(10, 1))).rejects.toMatchObject({ code: 'EIO' });
    await m.write(0, Buffer.alloc(10, 2));
    await m.flush();
    expect(img.data[0]).toBe(2);
  });
});

describe('rule 6: flush drains then flushes the image; write-through handles', () => {
  it('flush sends every pending write before Image.flush', async () => {
    const img = new ModelImage(MiB, { delay: () => 3 });
    const m = new RequestMerger(img, { delayMs: 10_000 });
    await m.write(0, pattern(4096, 1));
    await m.write(100_000, pattern(300, 2));
    await m.flush();
    const kinds = img.requests.map((r) => r.kind);
    expect(kinds[kinds.length - 1]).toBe('flush');
    expect(kinds.filter((k) => k === 'write')).toHaveLength(2);
    expect(m.stats()).toMatchObject({ pendingBytes: 0, inflightBytes: 0, imageFlushes: 1 });
  });

  it('writeThrough reaches the driver before returning; sync also flushes the image', async () => {
    const img = new ModelImage(MiB, { delay: () => 2 });
    const m = new RequestMerger(img, { delayMs: 10_000 });
    await m.write(0, Buffer.alloc(4096, 7), { writeThrough: true });
    expect(img.data[0]).toBe(7);
    expect(img.log('flush')).toHaveLength(0);
    await m.write(4096, Buffer.alloc(512, 8), { writeThrough: true, sync: true });
    expect(img.data[4096]).toBe(8);
    expect(img.log('flush')).toHaveLength(1);
    expect(img.violations).toEqual([]);
  });

  it('close drains and closes the image', async () => {
    const img = new ModelImage(MiB);
    const m = new RequestMerger(img, { delayMs: 10_000 });
    await m.write(0, Buffer.alloc(4096, 7));
    await m.close();
    expect(img.data[0]).toBe(7);
    expect(img.closed).toBe(true);
    await expect(m.write(0, Buffer.alloc(1))).rejects.toBeInstanceOf(VdiskError);
  });
});

describe('rule 7: the caller buffer is copied before write() yields', () => {
  it('reusing the buffer right after the call does not change what is written', async () => {
    const img = new ModelImage(MiB);
    const m = new RequestMerger(img, { delayMs: 10_000 });
    const borrowed = Buffer.alloc(4096, 0x11);
    const p1 = m.write(0, borrowed);
    borrowed.fill(0x22); // libfuse reuses its buffer once the handler yields
    const p2 = m.write(8192, borrowed, { writeThrough: true });
    borrowed.fill(0x33);
    await Promise.all([p1, p2]);
    await m.flush();
    expect(img.data[0]).toBe(0x11);
    expect(img.data[8192]).toBe(0x22);
  });
});

describe('zero extents and --no-merge', () => {
  it('sends an all-zero extent as writeZeroes and a mixed one as write', async () => {
    const img = new ModelImage(MiB);
    img.data.fill(0xff);
    const m = new RequestMerger(img, { delayMs: 10_000 });
    await m.write(0, Buffer.alloc(64 * 1024));
    await m.write(4096 * 100 + 10, Buffer.alloc(100)); // zeros, but the RMW page is not
    await m.flush();
    expect(img.log('zero').map((r) => [r.offset, r.length])).toEqual([[0, 65536]]);
    expect(img.log('write')).toHaveLength(1);
    expect(m.stats()).toMatchObject({ zeroWrites: 1, driverWrites: 1 });
    expect(img.data.subarray(0, 65536).every((b) => b === 0)).toBe(true);
  });

  it('--no-merge sends every write to the driver before returning, still aligned', async () => {
    const img = new ModelImage(MiB);
    const m = new RequestMerger(img, { merge: false });
    for (let i = 0; i < 10; i++) {
      await m.write(i * 1000, pattern(1000, i));
      expect(m.stats().pendingBytes).toBe(0);
    }
    expect(img.violations).toEqual([]);
    expect(m.stats().driverWrites).toBe(10);
    const expected = Buffer.alloc(MiB);
    for (let i = 0; i < 10; i++) pattern(1000, i).copy(expected, i * 1000);
    expect(img.data.equals(expected)).toBe(true);
  });

  it('refuses writes to a read-only image with EROFS', async () => {
    const m = new RequestMerger(new ModelImage(MiB, { readOnly: true }));
    await expect(m.write(0, Buffer.alloc(1))).rejects.toMatchObject({ code: 'EROFS' });
  });
});

describe('scale: a big random-write backlog', () => {
  it('sends 16k scattered writes correctly, with about 1 MiB of them pending at a time (the trickle)', async () => {
    const img = new ModelImage(256 * MiB);
    const m = new RequestMerger(img, { delayMs: 10_000, memCapBytes: 256 * MiB });
    const n = 16_384;
    for (let i = 0; i < n; i++) {
      await m.write(((i * 7919) % n) * 16384 + 512, Buffer.alloc(1024, (i % 250) + 1));
      if (i % 16 === 0) await turn();
    }
    expect(m.stats().pendingBytes).toBeLessThanOrEqual(MiB + 16 * 1024);
    await m.flush();
    expect(img.violations).toEqual([]);
    expect(img.log('write')).toHaveLength(n);
    expect(img.data[((7919 * 3) % n) * 16384 + 512]).toBe(4);
  });
});

describe('close', () => {
  it('refuses a write that races with close instead of leaving it pending on a closed image', async () => {
    const img = new ModelImage(MiB, { delay: () => 5 });
    const m = new RequestMerger(img, { delayMs: 10_000 });
    await m.write(0, Buffer.alloc(4096, 1));
    const closing = m.close();
    await expect(m.write(4096, Buffer.alloc(4096, 2))).rejects.toMatchObject({ code: 'EIO' });
    await closing;
    expect(img.data[0]).toBe(1);
    expect(img.violations).toEqual([]);
    await m.flush(); // harmless after close
    await m.close(); // idempotent
  });
});

describe('request size', () => {
  it('cuts an extent bigger than maxBytes into page-aligned driver requests of at most maxBytes', async () => {
    const img = new ModelImage(8 * MiB + 100);
    const m = new RequestMerger(img, { delayMs: 10_000, maxBytes: 256 * 1024 });
    const big = pattern(3 * MiB + 5000, 9);
    await m.write(1000, big);
    await m.write(8 * MiB - 1000, pattern(1100, 3)); // up to the unaligned disk end
    await m.flush();
    expect(img.violations).toEqual([]);
    for (const r of img.log('write')) expect(r.length).toBeLessThanOrEqual(256 * 1024);
    expect(img.log('write').length).toBeGreaterThanOrEqual(13);
    const expected = Buffer.alloc(8 * MiB + 100);
    big.copy(expected, 1000);
    pattern(1100, 3).copy(expected, 8 * MiB - 1000);
    expect(img.data.equals(expected)).toBe(true);
  });
});

describe('discard and zero-range: ordered like writes', () => {
  it('drops the pending bytes a discard covers, keeps the rest pending, and sends whole pages as discard', async () => {
    const img = new ModelImage(MiB);
    const m = new RequestMerger(img, { delayMs: 1000 });
    await m.write(0, pattern(64 * 1024, 1));
    await m.discard(8192, 16 * 1024 + 100); // whole pages [8K, 24K) plus 100 bytes of the next
    // The partial edge page goes out as zeros (read-modify-write; all zero here, so writeZeroes).
    expect(img.log('write', 'zero')).toEqual([expect.objectContaining({ offset: 24 * 1024, length: 4096 })]);
    expect(img.log('discard').map((r) => [r.offset, r.length])).toEqual([[8192, 16 * 1024]]);
    expect(m.stats().pendingBytes).toBe(64 * 1024 - 16 * 1024 - 100);
    await m.flush();
    expect(img.violations).toEqual([]);
    const expected = pattern(64 * 1024, 1);
    expected.fill(0, 8192, 24 * 1024 + 100);
    expect(img.data.subarray(0, 64 * 1024).equals(expected)).toBe(true);
    // The dropped bytes never reached the driver.
    for (const w of img.log('write')) expect(w.offset >= 24 * 1024 || w.offset + w.length <= 8192).toBe(true);
  });

  it('waits for an earlier write in flight, and a read or write issued after it sees the discard', async () => {
    const img = new ModelImage(MiB, { delay: (r) => (r.kind === 'write' ? 20 : 0) });
    const m = new RequestMerger(img);
    const first = m.write(0, pattern(128 * 1024, 2), { writeThrough: true });
    const discard = m.discard(0, 128 * 1024);
    const readBack = Buffer.alloc(128 * 1024, 0xff);
    const read = m.read(0, readBack);
    const later = m.write(4096, pattern(4096, 3));
    await Promise.all([first, discard, read, later]);
    await m.flush();
    expect(img.violations).toEqual([]);
    expect(readBack.equals(Buffer.alloc(128 * 1024))).toBe(true);
    const expected = Buffer.alloc(128 * 1024);
    pattern(4096, 3).copy(expected, 4096);
    expect(img.data.subarray(0, 128 * 1024).equals(expected)).toBe(true);
    const seq = img.requests.filter((r) => r.kind !== 'flush').map((r) => r.kind);
    expect(seq.indexOf('discard')).toBeGreaterThan(seq.indexOf('write'));
  });

  it('zero-range sends whole pages as writeZeroes and unaligned edges as zero pages; refused on a read-only image', async () => {
    const img = new ModelImage(MiB);
    img.data.fill(0xab);
    const m = new RequestMerger(img);
    await m.writeZeroes(1000, 3 * 4096);
    expect(img.log('zero').map((r) => [r.offset, r.length])).toEqual([[4096, 8192]]);
    expect(img.violations).toEqual([]);
    const expected = Buffer.alloc(MiB, 0xab);
    expected.fill(0, 1000, 1000 + 3 * 4096);
    expect(img.data.equals(expected)).toBe(true);
    const ro = new RequestMerger(new ModelImage(MiB, { readOnly: true }));
    await expect(ro.discard(0, 4096)).rejects.toThrow(VdiskError);
  });
});

describe('readSync: the synchronous read path answers only when read() would not wait', () => {
  /** A ModelImage that can also read synchronously; it counts such reads. */
  class SyncModelImage extends ModelImage {
    syncReads = 0;
    readSync(offset: number, into: Buffer): boolean {
      this.syncReads++;
      this.data.copy(into, 0, offset, offset + into.length);
      return true;
    }
  }

  it('reads what read() reads, unaligned ranges and the disk end included', async () => {
    const size = 64 * 4096 + 1000;
    const img = new SyncModelImage(size);
    pattern(size, 3).copy(img.data);
    const m = new RequestMerger(img, { delayMs: 1000 });
    for (const [off, len] of [
      [0, 4096],
      [100, 5000],
      [size - 700, 4096],
      [size, 10],
      [4096 * 3 + 1, 1],
    ] as const) {
      const a = Buffer.alloc(len, 0xaa);
      const b = Buffer.alloc(len, 0xbb);
      const got = m.readSync(off, a);
      const want = await m.read(off, b);
      expect(got === undefined ? undefined : [got, a.equals(b)]).toEqual(off >= size ? undefined : [want, true]);
    }
    expect(img.syncReads).toBe(4);
  });

  it('declines while a pending write or a driver write overlaps, and answers beside them', async () => {
    const img = new SyncModelImage(MiB, { delay: (r) => (r.kind === 'write' ? 20 : 0) });
    const m = new RequestMerger(img, { delayMs: 1000 });
    await m.write(8192, pattern(4096, 1));
    expect(m.readSync(8192 + 10, Buffer.alloc(10))).toBeUndefined(); // pending: read() would send it first
    expect(m.readSync(65536, Buffer.alloc(4096))).toBe(4096);
    const drained = m.drain(); // the driver write is now in flight for 20 ms
    expect(m.readSync(8192, Buffer.alloc(4096))).toBeUndefined();
    expect(m.readSync(0, Buffer.alloc(4096))).toBe(4096);
    await drained;
    const after = Buffer.alloc(4096);
    expect(m.readSync(8192, after)).toBe(4096);
    expect(after.equals(pattern(4096, 1))).toBe(true);
    expect(img.violations).toEqual([]);
  });
});

describe('writeSync: the synchronous write path answers only when write() would not wait', () => {
  const through = { writeThrough: true };

  it('writes whole pages of a write-through write at once, and the caller may reuse its buffer', async () => {
    const size = 16 * 4096 + 1000;
    const img = new ModelImage(size, { syncWrites: () => true });
    const m = new RequestMerger(img, { delayMs: 1000 });
    const data = pattern(8192, 4);
    expect(m.writeSync(4096, data, through)).toBe(true);
    data.fill(0); // borrowed: written before writeSync returned
    expect(img.data.subarray(4096, 12288).equals(pattern(8192, 4))).toBe(true);
    // The last page may end at the disk end.
    expect(m.writeSync(16 * 4096, pattern(1000, 5), through)).toBe(true);
    expect(img.data.subarray(16 * 4096).equals(pattern(1000, 5))).toBe(true);
    expect(m.stats()).toMatchObject({ mergedWrites: 2, driverWrites: 2, pendingBytes: 0 });
    expect(img.syncWriteCount).toBe(2);
    expect(img.violations).toEqual([]);
  });

  it('declines what write() must handle: deferred, O_SYNC, partial pages, all zeros, a driver that cannot', async () => {
    let accept = true;
    const img = new ModelImage(MiB, { syncWrites: () => accept });
    const m = new RequestMerger(img, { delayMs: 1000 });
    expect(m.writeSync(0, pattern(4096, 1))).toBe(false); // deferred: merged, acknowledged without the driver
    expect(m.writeSync(0, pattern(4096, 1), { writeThrough: true, sync: true })).toBe(false); // needs the image flush
    expect(m.writeSync(100, pattern(4096, 1), through)).toBe(false); // read-modify-write of two pages
    expect(m.writeSync(0, pattern(4000, 1), through)).toBe(false);
    expect(m.writeSync(0, Buffer.alloc(4096), through)).toBe(false); // zeros become Image.writeZeroes
    accept = false;
    expect(m.writeSync(0, pattern(4096, 1), through)).toBe(false);
    expect(img.syncWriteCount).toBe(0);
    expect(m.stats()).toMatchObject({ mergedWrites: 0, driverWrites: 0 });
    // Without merging every write goes through: the synchronous path takes plain writes too.
    const plain = new RequestMerger(new ModelImage(MiB, { syncWrites: () => true }), { merge: false });
    expect(plain.writeSync(8192, pattern(4096, 2))).toBe(true);
  });

  it('declines while a pending write or a driver request overlaps, and answers beside them', async () => {
    const img = new ModelImage(MiB, { syncWrites: () => true, delay: (r) => (r.kind === 'write' ? 20 : 0) });
    const m = new RequestMerger(img, { delayMs: 1000 });
    await m.write(8192 + 10, pattern(100, 1)); // pending, deferred
    expect(m.writeSync(8192, pattern(4096, 2), through)).toBe(false); // write() would merge over it, in order
    expect(m.writeSync(65536, pattern(4096, 3), through)).toBe(true);
    const drained = m.drain(); // the driver write of page 2 is in flight for 20 ms
    expect(m.writeSync(8192, pattern(4096, 2), through)).toBe(false);
    const reading = m.read(131072, Buffer.alloc(4096)); // a read holds its pages too
    expect(m.writeSync(131072, pattern(4096, 4), through)).toBe(false);
    await Promise.all([drained, reading]);
    expect(m.writeSync(8192, pattern(4096, 2), through)).toBe(true);
    expect(img.data.subarray(8192, 12288).equals(pattern(4096, 2))).toBe(true);
    expect(img.violations).toEqual([]);
  });

  it('a deferred extent of whole pages goes to the driver in one synchronous step when nothing holds its pages', async () => {
    const img = new ModelImage(4 * MiB, { syncWrites: () => true, delay: () => 20 });
    const m = new RequestMerger(img, { delayMs: 10_000 });
    await m.write(8192, pattern(8192, 1)); // whole pages: at once
    await m.write(65536 + 100, pattern(500, 2)); // a partial page: read-modify-write, async
    await m.write(MiB, pattern(MiB, 3)); // a full extent, sent by write() itself: too large to write at once
    await m.write(3 * MiB, Buffer.alloc(4096)); // zeros: Image.writeZeroes
    const first = m.drain(); // page 16's read-modify-write holds the page for 40 ms
    await m.write(65536, pattern(4096, 4)); // the whole page again, deferred
    const second = m.drain(); // sent while page 16 is held: waits for it, async
    await Promise.all([first, second]);
    expect(img.syncWriteCount).toBe(1); // only the first
    expect(img.log('write').map((r) => r.offset)).toEqual([MiB, 8192, 65536, 65536]);
    expect(img.log('zero').map((r) => r.offset)).toEqual([3 * MiB]);
    expect(img.data.subarray(8192, 16384).equals(pattern(8192, 1))).toBe(true);
    expect(img.data.subarray(65536, 65536 + 4096).equals(pattern(4096, 4))).toBe(true); // the later write, last
    expect(img.data.subarray(MiB, 2 * MiB).equals(pattern(MiB, 3))).toBe(true);
    expect(m.stats()).toMatchObject({ pendingBytes: 0, inflightBytes: 0, failed: false });
    expect(img.violations).toEqual([]);
  });

  it('refuses like write(): read-only, past the end, after close', async () => {
    const ro = new RequestMerger(new ModelImage(MiB, { readOnly: true, syncWrites: () => true }), { merge: false });
    expect(() => ro.writeSync(0, pattern(4096, 1))).toThrow(VdiskError);
    const m = new RequestMerger(new ModelImage(MiB, { syncWrites: () => true }), { merge: false });
    expect(() => m.writeSync(MiB, pattern(4096, 1))).toThrow(VdiskError);
    await m.close();
    expect(() => m.writeSync(0, pattern(4096, 1))).toThrow(VdiskError);
  });
});
