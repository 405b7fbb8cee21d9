import { describe, expect, it } from 'vitest';
import { newMapping } from '../../../src/formats/data-path';
import { type MapContext, mapFirst } from '../../../src/formats/qcow2/mapping';
import {
  COMPRESSED_HI,
  KIND_COMPRESSED,
  KIND_NORMAL,
  l2HostOffset,
  l2Kind,
  setL1,
  setL2Normal,
  type L2Layout,
} from '../../../src/formats/qcow2/table-entry';

/**
 * mapFirst's run loop (integer words, carries into the high word) against the plainest reading
 * of the same tables: each cluster decoded alone with l2Kind/l2HostOffset, runs merged by hand.
 * Random tables of every kind, with host offsets that cross 4 GiB boundaries mid-run.
 */
const CB = 16;
const CS = 1 << CB;
const N = 64; // entries per table
const TABLES = 3;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function randomContext(seed: number, dataFile: boolean): MapContext {
  const r = rng(seed);
  const layout: L2Layout = { clusterBits: CB, extended: false, entrySize: 8, dataFile };
  const l1 = Buffer.alloc(TABLES * 8);
  const tables = new Map<number, Buffer>();
  // Data runs start a few clusters below a 4 GiB multiple, so contiguity crosses the high word.
  let host = 2 ** 32 * (1 + Math.floor(r() * 3)) - CS * Math.floor(r() * 4);
  for (let ti = 0; ti < TABLES; ti++) {
    const t = Buffer.alloc(N * 8);
    for (let j = 0; j < N; j++) {
      const x = r();
      const o = j * 8;
      if (x < 0.55) {
        if (r() < 0.1) host += CS * (1 + Math.floor(r() * 3)); // a gap: the run must end here
        setL2Normal(t, j, layout, host, r() < 0.7);
        if (r() < 0.03) t.writeUInt32BE((t.readUInt32BE(o + 4) | 1) >>> 0, o + 4); // zero flag on data
        host += CS;
      } else if (x < 0.7) {
        t.writeUInt32BE(r() < 0.5 ? 0 : 0x80000000, o); // zero (COPIED may be set)
        t.writeUInt32BE(1, o + 4);
      } else if (x < 0.93) {
        // unallocated; with a data file, COPIED on host 0 means allocated at offset 0
        t.writeUInt32BE(dataFile && r() < 0.2 ? 0x80000000 : 0, o);
      } else {
        t.writeUInt32BE((COMPRESSED_HI | (1 << 14)) >>> 0, o);
        t.writeUInt32BE(0x40000 + j * 512, o + 4);
      }
    }
    const off = 0x100000 + ti * CS;
    setL1(l1, ti, off, true);
    tables.set(off, t);
  }
  return { clusterBits: CB, clusterSize: 2 ** CB, layout, l2Entries: N, l1, l1Size: TABLES, cache: { peek: (o) => tables.get(o) } };
}

/** The first piece of [offset, end), cluster by cluster: [kind, length, host]. */
function reference(ctx: MapContext, offset: number, end: number): [number, number, number] {
  let kind = -1;
  let host = 0;
  let pos = offset;
  while (pos < end) {
    const gc = Math.floor(pos / CS);
    const t = ctx.cache.peek(0x100000 + Math.floor(gc / N) * CS)!;
    const k = l2Kind(t, gc % N, ctx.layout);
    const stop = Math.min(end, (gc + 1) * CS);
    const h = k === KIND_NORMAL ? l2HostOffset(t, gc % N, ctx.layout) + (pos - gc * CS) : 0;
    if (k === KIND_COMPRESSED) {
      if (kind < 0) return [k, stop - pos, -1];
      break;
    }
    if (kind < 0) [kind, host] = [k, h];
    else if (k !== kind || (k === KIND_NORMAL && h !== host + (pos - offset))) break;
    pos = stop;
  }
  return [kind, pos - offset, kind === KIND_NORMAL ? host : 0];
}

describe('qcow2 mapFirst runs', () => {
  for (const dataFile of [false, true]) {
    it(`agrees with a cluster-by-cluster decoding on random tables${dataFile ? ' (external data file)' : ''}`, () => {
      let pieces = 0;
      for (let seed = 1; seed <= 40; seed++) {
        const ctx = randomContext(seed * 7919 + (dataFile ? 1 : 0), dataFile);
        const r = rng(seed);
        const total = TABLES * N * CS;
        for (let q = 0; q < 30; q++) {
          const offset = Math.floor(r() * total);
          const end = Math.min(total, offset + 1 + Math.floor(r() * total));
          // A whole map, piece after piece, as mapSync walks it.
          for (let pos = offset; pos < end;) {
            const m = newMapping();
            expect(mapFirst(ctx, pos, end - pos, m)).toBe(true);
            const [kind, length, host] = reference(ctx, pos, end);
            expect([m.kind, m.length, m.kind === KIND_NORMAL ? m.host : m.kind === KIND_COMPRESSED ? -1 : 0]).toEqual([kind, length, host]);
            pos += m.length;
            pieces++;
          }
        }
      }
      expect(pieces).toBeGreaterThan(1000);
    });
  }

  it('a data entry that is not cluster aligned is refused when the map reaches it, not skipped', () => {
    const ctx = randomContext(3, false);
    const t = ctx.cache.peek(0x100000)!;
    const layout = ctx.layout;
    for (let j = 0; j < N; j++) setL2Normal(t, j, layout, 2 ** 32 - 2 * CS + j * CS, true); // one run across 4 GiB
    t.writeUInt32BE(t.readUInt32BE(10 * 8 + 4) + 512, 10 * 8 + 4);
    const m = newMapping();
    expect(mapFirst(ctx, 0, N * CS, m)).toBe(true);
    expect(m.length).toBe(10 * CS); // the run stops before the odd entry
    expect(() => mapFirst(ctx, 10 * CS, CS, newMapping())).toThrow(/not cluster aligned/);
  });
});
