import { describe, expect, it } from 'vitest';
import {
  decodeInitIn,
  encodeInitOut,
  InitFlag,
  InitFlag2,
  initFlagNames,
  negotiate,
  MAX_WRITE,
} from '../../../../src/fuse/kernel/protocol';

/** fuse_init_in as kernel 6.x sends it (64 bytes, flags2 valid with INIT_EXT). */
function initIn(minor: number, flags: number, flags2 = 0, size = 64): Buffer {
  const b = Buffer.alloc(size);
  b.writeUInt32LE(7, 0);
  b.writeUInt32LE(minor, 4);
  b.writeUInt32LE(131072, 8); // max_readahead
  b.writeUInt32LE(flags >>> 0, 12);
  if (size >= 20) b.writeUInt32LE(flags2, 16);
  return b;
}

const KERNEL_6_18 =
  InitFlag.ASYNC_READ |
  InitFlag.POSIX_LOCKS |
  InitFlag.ATOMIC_O_TRUNC |
  InitFlag.BIG_WRITES |
  InitFlag.ASYNC_DIO |
  InitFlag.WRITEBACK_CACHE |
  InitFlag.PARALLEL_DIROPS |
  InitFlag.MAX_PAGES |
  InitFlag.INIT_EXT;

describe('INIT', () => {
  it('decodes fuse_init_in, flags2 only with INIT_EXT', () => {
    expect(decodeInitIn(initIn(45, KERNEL_6_18, 0x20), 0, 64)).toEqual({
      major: 7,
      minor: 45,
      maxReadahead: 131072,
      flags: KERNEL_6_18 >>> 0,
      flags2: 0x20,
    });
    expect(decodeInitIn(initIn(45, InitFlag.ASYNC_READ, 0x20), 0, 64).flags2).toBe(0);
    expect(decodeInitIn(initIn(26, InitFlag.ASYNC_READ, 0, 16), 0, 16).flags2).toBe(0);
  });

  it('on a 7.45 kernel asks for 1 MiB requests and the flags it offers, never more', () => {
    const n = negotiate(decodeInitIn(initIn(45, KERNEL_6_18), 0, 64), { writebackCache: false });
    expect(n.ok).toBe(true);
    if (!n.ok) return;
    expect(n.reply.minor).toBe(39);
    expect(n.reply.maxWrite).toBe(MAX_WRITE);
    expect(n.reply.maxPages).toBe(256);
    expect(initFlagNames(n.reply.flags).sort()).toEqual([
      'ASYNC_DIO',
      'ASYNC_READ',
      'ATOMIC_O_TRUNC',
      'BIG_WRITES',
      'MAX_PAGES',
      'PARALLEL_DIROPS',
    ]);
    const wb = negotiate(decodeInitIn(initIn(45, KERNEL_6_18), 0, 64), { writebackCache: true });
    expect(wb.ok && (wb.reply.flags & InitFlag.WRITEBACK_CACHE) !== 0).toBe(true);
    // The kernel would zero its cached size on an atomic O_TRUNC open: O_TRUNC comes as SETATTR instead.
    expect(wb.ok && (wb.reply.flags & InitFlag.ATOMIC_O_TRUNC) === 0).toBe(true);
  });

  it('lets writers bypass the page cache only where the kernel keeps mmap and caches coherent (7.39 flags2)', () => {
    const offered = decodeInitIn(initIn(45, KERNEL_6_18, InitFlag2.DIRECT_IO_ALLOW_MMAP | 0x8), 0, 64);
    const n = negotiate(offered, { writebackCache: false });
    expect(n.ok && n.uncachedWriters).toBe(true);
    if (!n.ok) return;
    // flags2 is read by the kernel only with INIT_EXT in flags; nothing it did not offer is set.
    expect(n.reply.flags & InitFlag.INIT_EXT).toBe(InitFlag.INIT_EXT);
    expect(n.reply.flags2).toBe(InitFlag2.DIRECT_IO_ALLOW_MMAP);
    expect(initFlagNames(n.reply.flags, n.reply.flags2)).toContain('DIRECT_IO_ALLOW_MMAP');
    const b = Buffer.alloc(64);
    encodeInitOut(b, 0, n.reply);
    expect(b.readUInt32LE(32)).toBe(InitFlag2.DIRECT_IO_ALLOW_MMAP);

    // The writeback cache lives in the page cache: then every handle keeps it.
    const wb = negotiate(offered, { writebackCache: true });
    expect(wb.ok && !wb.uncachedWriters && wb.reply.flags2 === 0 && (wb.reply.flags & InitFlag.INIT_EXT) === 0).toBe(true);
    // A kernel before 6.6 (no flag offered; or no INIT_EXT, so no flags2 at all): cached as before.
    const old = negotiate(decodeInitIn(initIn(38, KERNEL_6_18), 0, 64), { writebackCache: false });
    expect(old.ok && !old.uncachedWriters && old.reply.flags2 === 0 && (old.reply.flags & InitFlag.INIT_EXT) === 0).toBe(true);
    const noExt = negotiate(decodeInitIn(initIn(45, KERNEL_6_18 & ~InitFlag.INIT_EXT, InitFlag2.DIRECT_IO_ALLOW_MMAP), 0, 64), {
      writebackCache: false,
    });
    expect(noExt.ok && !noExt.uncachedWriters).toBe(true);
  });

  it('degrades on an older kernel: no MAX_PAGES means 128 KiB requests', () => {
    const n = negotiate(decodeInitIn(initIn(26, InitFlag.ASYNC_READ | InitFlag.BIG_WRITES, 0, 16), 0, 16), { writebackCache: true });
    expect(n.ok).toBe(true);
    if (!n.ok) return;
    expect(n.reply.minor).toBe(26);
    expect(n.reply.maxWrite).toBe(128 * 1024);
    expect(n.reply.maxPages).toBe(0);
    expect(n.reply.flags).toBe(InitFlag.ASYNC_READ | InitFlag.BIG_WRITES);
  });

  it('refuses a protocol too old, and answers a newer major with 7', () => {
    const old = negotiate({ major: 7, minor: 8, maxReadahead: 0, flags: 0, flags2: 0 }, { writebackCache: false });
    expect(old.ok).toBe(false);
    const newer = negotiate({ major: 8, minor: 0, maxReadahead: 0, flags: 0, flags2: 0 }, { writebackCache: false });
    expect(newer.ok === false && newer.retryWithMajor).toBe(7);
  });

  it('encodes fuse_init_out at the kernel offsets: 64 bytes, or 24 before 7.23', () => {
    const b = Buffer.alloc(80, 0xff);
    const size = encodeInitOut(b, 16, {
      major: 7,
      minor: 31,
      maxReadahead: 131072,
      flags: InitFlag.ASYNC_READ | InitFlag.MAX_PAGES,
      maxBackground: 12,
      congestionThreshold: 9,
      maxWrite: MAX_WRITE,
      timeGran: 1,
      maxPages: 256,
    });
    expect(size).toBe(64);
    expect(b.readUInt32LE(16)).toBe(7);
    expect(b.readUInt32LE(20)).toBe(31);
    expect(b.readUInt32LE(24)).toBe(131072);
    expect(b.readUInt32LE(28)).toBe((InitFlag.ASYNC_READ | InitFlag.MAX_PAGES) >>> 0);
    expect(b.readUInt16LE(32)).toBe(12);
    expect(b.readUInt16LE(34)).toBe(9);
    expect(b.readUInt32LE(36)).toBe(MAX_WRITE);
    expect(b.readUInt32LE(40)).toBe(1);
    expect(b.readUInt16LE(44)).toBe(256);
    expect(b.subarray(46, 80).every((x) => x === 0)).toBe(true);
    expect(
      encodeInitOut(Buffer.alloc(64), 0, {
        major: 7,
        minor: 22,
        maxReadahead: 0,
        flags: 0,
        maxBackground: 0,
        congestionThreshold: 0,
        maxWrite: 4096,
        timeGran: 1,
        maxPages: 0,
      }),
    ).toBe(24);
  });
});
