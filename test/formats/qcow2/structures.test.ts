/**
 * Unit tests of the on-disk structure helpers: header round trip and limits, refcount widths
 * 1..64, L1/L2 entry encoding (standard, compressed, extended), the zstd frame walker, the
 * metadata cache (LRU, pins, write-back). The image lock is an OrderedRangeLock: test/io/range-lock.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { zstdFrameLength } from '../../../src/formats/qcow2/compression';
import { parseExtensions, serializeExtensions, STANDARD_FEATURES } from '../../../src/formats/qcow2/extensions';
import { Header, parseHeader, serializeHeader, V3_SIZE } from '../../../src/formats/qcow2/header';
import { MetadataCache, TableKind } from '../../../src/formats/qcow2/metadata-cache';
import { getRefcount, maxRefcount, reftableEntry, setRefcount, setReftableEntry } from '../../../src/formats/qcow2/refcount-block';
import {
  KIND_COMPRESSED,
  KIND_NORMAL,
  KIND_UNALLOCATED,
  KIND_ZERO,
  l1Copied,
  l1Offset,
  l2AllocBits,
  l2Compressed,
  l2Copied,
  l2HostOffset,
  l2Kind,
  l2ZeroBits,
  setL1,
  setL2Extended,
  setL2Normal,
  setL2Zero,
  setL2ZeroAllocated,
  subclusterMask,
} from '../../../src/formats/qcow2/table-entry';

function header(over: Partial<Header> = {}): Header {
  return {
    version: 3,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: 16,
    size: 1 << 30,
    cryptMethod: 0,
    l1Size: 2,
    l1TableOffset: 3 << 16,
    refcountTableOffset: 1 << 16,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatible: 0n,
    compatible: 1n,
    autoclear: 0n,
    refcountOrder: 4,
    headerLength: V3_SIZE,
    compressionType: 0,
    ...over,
  };
}

describe('header', () => {
  it('round-trips v3 and v2', () => {
    const h = header({ size: 2 ** 45, l1Size: 65536, l1TableOffset: 2 ** 40 });
    expect(parseHeader(serializeHeader(h))).toEqual(h);
    const v2 = header({ version: 2, incompatible: 0n, compatible: 0n, headerLength: 72 });
    expect(parseHeader(serializeHeader(v2))).toEqual(v2);
  });
  it('refuses what QEMU refuses', () => {
    expect(() => parseHeader(serializeHeader(header({ l1Size: 5_000_000 })))).toThrow(/L1 size too big/);
    expect(() => parseHeader(serializeHeader(header({ l1TableOffset: 12345 })))).toThrow(/not cluster aligned/);
    expect(() => parseHeader(serializeHeader(header({ refcountOrder: 7 })))).toThrow(/refcount_order/);
    expect(() => parseHeader(serializeHeader(header({ size: 2 ** 40 })))).toThrow(/L1 table too small/);
  });
  it('extensions: feature table and backing format round-trip; unknown ones skipped', () => {
    const ext = serializeExtensions({ backingFormat: 'raw', features: STANDARD_FEATURES });
    const c0 = Buffer.alloc(4096);
    // an unknown extension first
    c0.writeUInt32BE(0x12345678, 112);
    c0.writeUInt32BE(5, 116);
    ext.copy(c0, 112 + 16);
    const p = parseExtensions(c0, 112);
    expect(p.backingFormat).toBe('raw');
    expect(p.features).toEqual(STANDARD_FEATURES);
  });
});

describe('refcount blocks', () => {
  for (let order = 0; order <= 6; order++) {
    it(`${1 << order}-bit refcounts`, () => {
      const block = Buffer.alloc(512);
      const n = (512 * 8) >> order;
      const max = Math.min(maxRefcount(order), 2 ** 40);
      for (let i = 0; i < n; i++) setRefcount(block, i, order, i % 3 === 0 ? max : i % (max + 1));
      for (let i = 0; i < n; i++) expect(getRefcount(block, i, order)).toBe(i % 3 === 0 ? max : i % (max + 1));
      expect(() => setRefcount(block, 0, order, maxRefcount(order) + 1)).toThrow();
    });
  }
  it('refcount table entries', () => {
    const t = Buffer.alloc(16);
    setReftableEntry(t, 1, 2 ** 41 + 65536);
    expect(reftableEntry(t, 1)).toBe(2 ** 41 + 65536);
    expect(reftableEntry(t, 0)).toBe(0);
  });
});

describe('L1/L2 entries', () => {
  const std = { clusterBits: 16, extended: false, entrySize: 8 };
  const ext = { clusterBits: 16, extended: true, entrySize: 16 };
  it('L1: offset and COPIED', () => {
    const t = Buffer.alloc(16);
    setL1(t, 1, 2 ** 50 + 3 * 65536, true);
    expect(l1Offset(t, 1)).toBe(2 ** 50 + 3 * 65536);
    expect(l1Copied(t, 1)).toBe(true);
  });
  it('standard kinds', () => {
    const t = Buffer.alloc(64);
    expect(l2Kind(t, 0, std)).toBe(KIND_UNALLOCATED);
    setL2Normal(t, 1, std, 2 ** 47, true);
    expect([l2Kind(t, 1, std), l2HostOffset(t, 1, std), l2Copied(t, 1, std)]).toEqual([KIND_NORMAL, 2 ** 47, true]);
    setL2Zero(t, 2, std);
    expect([l2Kind(t, 2, std), l2HostOffset(t, 2, std)]).toEqual([KIND_ZERO, 0]);
    setL2ZeroAllocated(t, 3, 5 * 65536);
    expect([l2Kind(t, 3, std), l2HostOffset(t, 3, std), l2Copied(t, 3, std)]).toEqual([KIND_ZERO, 5 * 65536, true]);
  });
  it('compressed descriptors for every cluster size', () => {
    for (let cb = 9; cb <= 21; cb++) {
      const l = { clusterBits: cb, extended: false, entrySize: 8 };
      const x = 62n - BigInt(cb - 8);
      const host = 2n ** 40n + 1234n;
      const sectors = (1n << BigInt(cb - 8)) - 1n; // the field is cluster_bits - 8 bits wide: its largest value
      const t = Buffer.alloc(8);
      t.writeBigUInt64BE((1n << 62n) | (sectors << x) | host);
      expect(l2Kind(t, 0, l)).toBe(KIND_COMPRESSED);
      expect(l2Compressed(t, 0, l)).toEqual({ host: Number(host), size: Number(sectors + 1n) * 512 - (1234 % 512) });
    }
  });
  it('extended entries and subcluster masks', () => {
    const t = Buffer.alloc(32);
    setL2Extended(t, 1, ext, 7 * 65536, true, subclusterMask(4, 6), 0xffffffff & ~subclusterMask(4, 6));
    expect(l2AllocBits(t, 1, ext)).toBe(0b110000);
    expect(l2ZeroBits(t, 1, ext)).toBe(~0b110000 >>> 0);
    expect(subclusterMask(0, 32)).toBe(0xffffffff);
    expect(subclusterMask(31, 32)).toBe(0x80000000);
  });
});

describe('zstd frame length', () => {
  it('walks header, blocks and checksum; stops at the frame end', () => {
    // magic, FHD 0x60 (single segment, 2-byte FCS), FCS, RLE last block of size 65536, then the next frame
    const frame = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x60, 0x00, 0xff, 0x03, 0x00, 0x08, 0x7a]);
    const bh = (65536 << 3) | (1 << 1) | 1; // RLE, last
    frame.writeUIntLE(bh, 7, 3);
    expect(zstdFrameLength(Buffer.concat([frame, frame]))).toBe(frame.length);
    expect(() => zstdFrameLength(Buffer.from('not zstd'))).toThrow();
  });
});

describe('metadata cache', () => {
  function make(cap: number) {
    const written: number[] = [];
    const cache = new MetadataCache(cap, 512, {
      load: async (_k: TableKind, off: number, into: Buffer) => {
        into.fill(off / 512);
      },
      write: async (_k: TableKind, offset: number, bufs: Buffer[]) => {
        for (let i = 0; i < bufs.length; i++) written.push(offset + i * 512);
      },
      sync: async () => undefined,
    });
    return { cache, written };
  }
  it('LRU eviction writes dirty entries back and skips pinned ones', async () => {
    const { cache, written } = make(2 * 512);
    const a = await cache.get('l2', 512);
    a.dirty = true;
    cache.unpin(a);
    const b = await cache.get('l2', 1024); // stays pinned
    const c = await cache.get('l2', 1536);
    cache.unpin(c);
    await cache.evict();
    expect(written).toEqual([512]);
    expect(cache.peek(512)).toBeUndefined();
    expect(cache.peek(1024)![0]).toBe(2);
    cache.unpin(b);
    expect(cache.misses).toBe(3);
  });
});
