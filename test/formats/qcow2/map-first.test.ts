import { describe, expect, it } from 'vitest';
import { COMPRESSED, DATA, newMapping, UNALLOCATED, ZERO } from '../../../src/formats/data-path';
import { type MapContext, mapFirst, mapSync } from '../../../src/formats/qcow2/mapping';
import type { MetadataCache } from '../../../src/formats/qcow2/metadata-cache';
import { COMPRESSED_HI, setL1, setL2Normal, setL2Zero, type L2Layout } from '../../../src/formats/qcow2/table-entry';

/**
 * mapFirst, the qcow2 answer to the shared data path, on hand-built tables: 64 KiB clusters,
 * 4 entries per L2 table. L1: table 0 cached, table 1 unallocated, table 2 allocated but not cached.
 */
const CB = 16;
const CS = 1 << CB;
const layout: L2Layout = { clusterBits: CB, extended: false, entrySize: 8 };

function context(entries: (t: Buffer) => void): MapContext {
  const l1 = Buffer.alloc(3 * 8);
  setL1(l1, 0, 0x10000, true);
  setL1(l1, 2, 0x20000, true);
  const t0 = Buffer.alloc(4 * 8);
  entries(t0);
  const cached = new Map([[0x10000, t0]]);
  const cache = { peek: (off: number) => cached.get(off) } as unknown as MetadataCache;
  return { clusterBits: CB, clusterSize: 2 ** CB, layout, l2Entries: 4, l1, l1Size: 3, cache };
}

/** Compressed entry: host 0x300100, 2 more sectors stored. */
function setCompressed(t: Buffer, i: number): void {
  const hiBits = 62 - (CB - 8) - 32;
  t.writeUInt32BE((COMPRESSED_HI | (2 << hiBits)) >>> 0, i * 8);
  t.writeUInt32BE(0x300100, i * 8 + 4);
}

const standard = (t: Buffer) => {
  setL2Normal(t, 0, layout, 0x100000, true);
  setL2Normal(t, 1, layout, 0x110000, true); // host-contiguous with entry 0
  setL2Zero(t, 2, layout);
  setCompressed(t, 3);
};

function first(ctx: MapContext, offset: number, length: number) {
  const m = newMapping();
  if (!mapFirst(ctx, offset, length, m)) return undefined;
  const { kind, length: n, host, size, unit } = m;
  return kind === DATA ? { kind, n, host } : kind === COMPRESSED ? { kind, n, host, size, unit } : { kind, n };
}

describe('qcow2 mapFirst', () => {
  const ctx = context(standard);
  it('merges host-contiguous data clusters and starts mid-cluster', () => {
    expect(first(ctx, 0, 8 * CS)).toEqual({ kind: DATA, n: 2 * CS, host: 0x100000 });
    expect(first(ctx, CS / 2, 8 * CS)).toEqual({ kind: DATA, n: 1.5 * CS, host: 0x100000 + CS / 2 });
    expect(first(ctx, 100, 4096)).toEqual({ kind: DATA, n: 4096, host: 0x100000 + 100 });
  });
  it('ends a piece where the kind changes; a compressed cluster is a piece of its own', () => {
    expect(first(ctx, 2 * CS, 8 * CS)).toEqual({ kind: ZERO, n: CS });
    expect(first(ctx, 3 * CS + 100, 1000)).toEqual({ kind: COMPRESSED, n: 1000, host: 0x300100, size: 3 * 512 - 0x100, unit: 3 * CS });
  });
  it('answers a whole unallocated L2 table, stops before a table not cached, and does not answer there', () => {
    expect(first(ctx, 4 * CS, 10 * CS)).toEqual({ kind: UNALLOCATED, n: 4 * CS });
    expect(first(ctx, 8 * CS, CS)).toBeUndefined();
  });
  it('does not merge data clusters that are not contiguous on the host', () => {
    const c = context((t) => {
      setL2Normal(t, 0, layout, 0x100000, true);
      setL2Normal(t, 1, layout, 0x130000, true);
    });
    expect(first(c, 0, 2 * CS)).toEqual({ kind: DATA, n: CS, host: 0x100000 });
    expect(first(c, CS, CS)).toEqual({ kind: DATA, n: CS, host: 0x130000 });
  });
  it('mapSync lists the same pieces, or nothing when a table it needs is not cached', () => {
    expect(mapSync(ctx, 0, 8 * CS)).toEqual([
      { guest: 0, length: 2 * CS, kind: DATA, host: 0x100000, cSize: 0, cluster: 0 },
      { guest: 2 * CS, length: CS, kind: ZERO, host: 0, cSize: 0, cluster: 0 },
      { guest: 3 * CS, length: CS, kind: COMPRESSED, host: 0x300100, cSize: 3 * 512 - 0x100, cluster: 3 * CS },
      { guest: 4 * CS, length: 4 * CS, kind: UNALLOCATED, host: 0, cSize: 0, cluster: 0 },
    ]);
    expect(mapSync(ctx, 0, 9 * CS)).toBeUndefined();
  });
  it('refuses a data cluster that is not cluster aligned', () => {
    const c = context((t) => setL2Normal(t, 0, layout, 0x100200, true));
    expect(() => first(c, 0, CS)).toThrow(/not cluster aligned/);
  });
});
