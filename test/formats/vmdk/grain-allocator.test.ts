import { describe, expect, it } from 'vitest';
import { OrderedRangeLock } from '../../../src/io/range-lock';
import { type GrainSpace, writeGrains, writeGrainsSync, writeZeroGrains } from '../../../src/formats/vmdk/grain-allocator';
import { GTE_ZEROED, SECTOR } from '../../../src/formats/vmdk/sparse-header';

/**
 * The allocator (seed 1) against a fake extent: no file, no QEMU. The fake records every data
 * write and table change in one log, so the order the seed promises is visible.
 */
const G = 4096;
const PER_TABLE = 16;

interface Write {
  at: number;
  bytes: Buffer;
}

class FakeExtent implements GrainSpace {
  readonly fileName = 'fake.vmdk';
  readonly grainBytes = G;
  readonly gtEntries = PER_TABLE;
  readonly compressed = false;
  readonly zeroGrainAllowed = true;
  readonly stats = { grainsAllocated: 0, dataWrites: 0, cowReads: 0, zeroGrains: 0 };
  readonly grainLock = new OrderedRangeLock();
  readonly tables = new Map<number, Uint32Array>();
  readonly log: string[] = [];
  readonly writes: Write[] = [];
  nextFree = 64 * SECTOR;
  /** Data writes settle only when released, to see what happens while they are in flight. */
  private releaseWrites: (() => void)[] = [];

  constructor(readonly noMultiAlloc = false) {}

  readonly file = {
    write: async (data: Buffer | Buffer[], at: number): Promise<void> => {
      const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
      this.writes.push({ at, bytes });
      this.log.push(`write ${at}+${bytes.length}`);
      await new Promise<void>((r) => this.releaseWrites.push(r));
      this.log.push(`written ${at}`);
    },
    writeSync: (data: Buffer, at: number): boolean => {
      this.writes.push({ at, bytes: Buffer.from(data) });
      this.log.push(`write ${at}+${data.length} sync`);
      return true;
    },
  };

  /** Lets every data write issued so far complete. */
  release(): void {
    for (const r of this.releaseWrites.splice(0)) r();
  }

  pinTables(g0: number, g1: number): [number, number] {
    return [Math.floor(g0 / PER_TABLE), Math.floor((g1 - 1) / PER_TABLE)];
  }
  unpinTables(): void {}
  tablesResident(): boolean {
    return true;
  }
  async loadTables(): Promise<void> {}
  gte(g: number): number {
    return this.tables.get(Math.floor(g / PER_TABLE))?.[g % PER_TABLE] ?? 0;
  }
  setGte(g: number, value: number): void {
    this.tables.get(Math.floor(g / PER_TABLE))![g % PER_TABLE] = value;
    this.log.push(`gte ${g}=${value}`);
  }
  ensureTable(t: number): void {
    if (!this.tables.has(t)) this.tables.set(t, new Uint32Array(PER_TABLE));
  }
  reserve(bytes: number): number {
    const at = this.nextFree;
    this.nextFree += bytes;
    this.log.push(`reserve ${bytes}`);
    return at;
  }
  async writeEntryThrough(g: number): Promise<void> {
    this.log.push(`through ${g}`);
  }
}

/** Runs `p` while releasing data writes as they come, until it settles. */
async function drive(ext: FakeExtent, p: Promise<void>): Promise<void> {
  let done = false;
  const settled = p.finally(() => (done = true));
  while (!done) {
    await new Promise((r) => setImmediate(r));
    ext.release();
  }
  await settled;
}

describe('grain allocator (seed 1) against a fake extent', () => {
  it('one request over four missing grains: one contiguous run, one data write, COW of the two partial grains only, entries set together after the data', async () => {
    const ext = new FakeExtent();
    const cowCalls: [number, number][] = [];
    const cow = async (from: number, into: Buffer): Promise<void> => {
      cowCalls.push([from, into.length]);
      into.fill(0xcc);
    };
    const offset = 1000;
    const length = 3 * G + 500; // grains 0..3: partial head (0) and tail (3)
    const payload = Buffer.alloc(length, 0xab);
    const run = writeGrains(ext, offset, [payload], length, cow);
    // The data write is issued and still in flight: no table entry may exist yet.
    for (let i = 0; i < 5 && ext.writes.length === 0; i++) await new Promise((r) => setImmediate(r));
    expect(ext.writes).toHaveLength(1);
    expect(ext.log.filter((l) => l.startsWith('gte'))).toEqual([]);
    await drive(ext, run);

    // One reservation of four grains, one write covering all of them.
    expect(ext.log.filter((l) => l.startsWith('reserve'))).toEqual([`reserve ${4 * G}`]);
    const start = 64 * SECTOR;
    expect(ext.writes).toHaveLength(1);
    expect(ext.writes[0]!.at).toBe(start);
    expect(ext.writes[0]!.bytes.length).toBe(4 * G);
    // COW once for each partial grain (head before the payload, tail after it), none for whole grains.
    expect(cowCalls).toEqual([
      [0, offset],
      [offset + length, 4 * G - (offset + length)],
    ]);
    expect(ext.stats.cowReads).toBe(2);
    const bytes = ext.writes[0]!.bytes;
    expect(bytes.subarray(0, offset).every((b) => b === 0xcc)).toBe(true);
    expect(bytes.subarray(offset, offset + length).equals(payload)).toBe(true);
    expect(bytes.subarray(offset + length).every((b) => b === 0xcc)).toBe(true);
    // Entries: contiguous host sectors, all set after the write completed, none written through.
    const written = ext.log.indexOf(`written ${start}`);
    const gtes = ext.log.map((l, i) => [l, i] as const).filter(([l]) => l.startsWith('gte'));
    expect(gtes.map(([l]) => l)).toEqual([0, 1, 2, 3].map((g) => `gte ${g}=${start / SECTOR + (g * G) / SECTOR}`));
    for (const [, i] of gtes) expect(i).toBeGreaterThan(written);
    expect(ext.log.some((l) => l.startsWith('through'))).toBe(false);
    expect(ext.stats.grainsAllocated).toBe(4);
    expect(ext.stats.dataWrites).toBe(1);
  });

  it('new grains over zeros (no parent): the zero COW head and tail are left out, one write of the payload', async () => {
    const ext = new FakeExtent();
    const offset = G + 1024; // grain 1, after a head of 1024 bytes
    const length = G + 512; // into grain 2, leaving a tail of G - 1536 bytes
    await drive(ext, writeGrains(ext, offset, [Buffer.alloc(length, 0xab)], length, null));
    const start = 64 * SECTOR; // grains 1 and 2 reserved here, together
    expect(ext.log.filter((l) => l.startsWith('reserve'))).toEqual([`reserve ${2 * G}`]);
    expect(ext.writes.map((w) => [w.at, w.bytes.length])).toEqual([[start + 1024, length]]);
    expect(ext.writes[0]!.bytes.every((b) => b === 0xab)).toBe(true);
    expect(ext.stats.cowReads).toBe(0);
    // Entries only after the write is done.
    const lastWritten = ext.log.indexOf(`written ${start + 1024}`);
    expect(lastWritten).toBeGreaterThanOrEqual(0);
    expect(ext.log.indexOf(`gte 1=${start / SECTOR}`)).toBeGreaterThan(lastWritten);
    expect(ext.log.indexOf(`gte 2=${(start + G) / SECTOR}`)).toBeGreaterThan(lastWritten);
  });

  it('a zeroed grain is COW from zeros too: its zero tail is left out, however short', async () => {
    const ext = new FakeExtent();
    ext.ensureTable(0);
    ext.setGte(0, GTE_ZEROED);
    ext.log.length = 0;
    const cowCalls: number[] = [];
    const cow = async (from: number, into: Buffer): Promise<void> => {
      cowCalls.push(from);
      into.fill(0xcc);
    };
    // Grain 0 is a zeroed grain: its COW source is zeros even though a parent exists.
    await drive(ext, writeGrains(ext, 0, [Buffer.alloc(G - 600, 1)], G - 600, cow));
    expect(cowCalls).toEqual([]);
    expect(ext.writes.map((w) => [w.at, w.bytes.length])).toEqual([[64 * SECTOR, G - 600]]);
    expect(ext.writes[0]!.bytes.every((b) => b === 1)).toBe(true);
  });

  it('grains already allocated are written in place, without reserving space or touching entries', async () => {
    const ext = new FakeExtent();
    ext.ensureTable(0);
    ext.setGte(0, 100);
    ext.setGte(1, 100 + G / SECTOR); // host-contiguous with grain 0
    ext.log.length = 0;
    await drive(ext, writeGrains(ext, 512, [Buffer.alloc(G, 1)], G, null));
    expect(ext.writes).toEqual([{ at: 100 * SECTOR + 512, bytes: Buffer.alloc(G, 1) }]);
    expect(ext.log.filter((l) => l.startsWith('reserve') || l.startsWith('gte'))).toEqual([]);
  });

  it("without multi-alloc (QEMU's way) the same request goes grain by grain, each entry written through", async () => {
    const ext = new FakeExtent(true);
    await drive(ext, writeGrains(ext, 0, [Buffer.alloc(3 * G, 7)], 3 * G, null));
    expect(ext.log.filter((l) => l.startsWith('reserve'))).toEqual([`reserve ${G}`, `reserve ${G}`, `reserve ${G}`]);
    expect(ext.log.filter((l) => l.startsWith('through'))).toEqual(['through 0', 'through 1', 'through 2']);
    expect(ext.writes).toHaveLength(3);
  });

  it('zeroing whole grains sets zeroed-grain entries, no data written; a partial grain gets real zeros', async () => {
    const ext = new FakeExtent();
    ext.ensureTable(0);
    ext.setGte(0, 100);
    ext.setGte(1, 200);
    ext.log.length = 0;
    await drive(ext, writeZeroGrains(ext, 0, G + 100, null, false));
    expect(ext.gte(0)).toBe(GTE_ZEROED);
    expect(ext.stats.zeroGrains).toBe(1);
    expect(ext.writes).toEqual([{ at: 200 * SECTOR, bytes: Buffer.alloc(100) }]);
  });

  it('two requests over the same missing grain: the second waits for the first, then writes in place (allocated once)', async () => {
    const ext = new FakeExtent();
    const a = writeGrains(ext, 0, [Buffer.alloc(1024, 1)], 1024, null);
    const b = writeGrains(ext, 2048, [Buffer.alloc(1024, 2)], 1024, null);
    await drive(
      ext,
      Promise.all([a, b]).then(() => undefined),
    );
    expect(ext.log.filter((l) => l.startsWith('reserve'))).toEqual([`reserve ${G}`]);
    expect(ext.stats.grainsAllocated).toBe(1);
    const host = 64 * SECTOR;
    // The first request writes its payload (the rest is fresh space, zeros already); the second
    // writes in place.
    expect(ext.writes.map((w) => [w.at, w.bytes.length])).toEqual([
      [host, 1024],
      [host + 2048, 1024],
    ]);
    // The in-place write comes only after grain 0 points at the first request's data.
    expect(ext.log.indexOf(`gte 0=${host / SECTOR}`)).toBeLessThan(ext.log.indexOf(`write ${host + 2048}+1024`));
    expect(ext.grainLock.count).toBe(0);
  });

  it('zeroing waits for a grain being allocated in its range, and a later write waits for the zeroing', async () => {
    const ext = new FakeExtent();
    const w = writeGrains(ext, 0, [Buffer.alloc(G, 3)], G, null); // grain 0: allocating
    const z = writeZeroGrains(ext, 0, 2 * G, null, true); // grains 0 and 1 whole: zeroed entries
    const after = writeGrains(ext, G, [Buffer.alloc(512, 4)], 512, null); // grain 1: after the zeroing
    await drive(
      ext,
      Promise.all([w, z, after]).then(() => undefined),
    );
    const gtes = ext.log.filter((l) => l.startsWith('gte'));
    expect(gtes).toEqual([
      `gte 0=${(64 * SECTOR) / SECTOR}`,
      `gte 0=${GTE_ZEROED}`,
      `gte 1=${GTE_ZEROED}`,
      `gte 1=${(64 * SECTOR + G) / SECTOR}`,
    ]);
    expect(ext.grainLock.count).toBe(0);
  });
});

describe('writeGrainsSync: the synchronous path', () => {
  it('writes host-contiguous runs of allocated grains at once and leaves the tables alone', () => {
    const ext = new FakeExtent();
    ext.ensureTable(0);
    // Grains 0 and 1 contiguous on the host, grain 2 elsewhere.
    ext.tables.get(0)!.set([100, 100 + G / SECTOR, 500]);
    const data = Buffer.alloc(3 * G - 200, 0x5e);
    expect(writeGrainsSync(ext, 100, data, true)).toBe(true);
    expect(ext.log).toEqual([`write ${100 * SECTOR + 100}+${2 * G - 100} sync`, `write ${500 * SECTOR}+${G - 100} sync`]);
    expect(ext.writes.every((w) => w.bytes.every((b) => b === 0x5e))).toBe(true);
    expect(ext.stats.dataWrites).toBe(2);
    expect(ext.stats.grainsAllocated).toBe(0);
  });

  it('allocates new grains at once when nothing is copied into them: payload only, entries after the data', () => {
    const ext = new FakeExtent();
    ext.ensureTable(0);
    ext.tables.get(0)!.set([100, 0, 0, GTE_ZEROED]);
    // Grain 0 in place, grains 1 and 2 new (no parent), the write ending inside grain 2.
    const data = Buffer.alloc(G + 300, 0x61);
    expect(writeGrainsSync(ext, G - 100, data, false)).toBe(true);
    const start = 64 * SECTOR;
    expect(ext.log).toEqual([
      `write ${100 * SECTOR + G - 100}+100 sync`,
      `reserve ${2 * G}`,
      `write ${start}+${G} sync`,
      `write ${start + G}+200 sync`, // the zero tail is left out: new space reads as zeros
      `gte 1=${start / SECTOR}`,
      `gte 2=${(start + G) / SECTOR}`,
    ]);
    expect(ext.stats.grainsAllocated).toBe(2);
    // Over a parent only a zeroed grain may be allocated this way (its COW source is zeros).
    ext.log.length = 0;
    expect(writeGrainsSync(ext, 3 * G + 10, Buffer.alloc(10, 1), true)).toBe(true);
    expect(ext.log).toEqual([`reserve ${G}`, `write ${start + 2 * G + 10}+10 sync`, `gte 3=${(start + 2 * G) / SECTOR}`]);
  });

  it("declines, doing nothing, for a COW from the parent, a grain another request is allocating, or QEMU's way", () => {
    const ext = new FakeExtent();
    ext.ensureTable(0);
    ext.tables.get(0)!.set([100, 0]);
    expect(writeGrainsSync(ext, G, Buffer.alloc(10, 1), true)).toBe(false); // grain 1 would copy from the parent
    const lease = ext.grainLock.acquire(1, 2, false);
    expect(writeGrainsSync(ext, G, Buffer.alloc(10, 1), false)).toBe(false); // grain 1 is being allocated
    lease.release();
    expect(writeGrainsSync(new FakeExtent(true), G, Buffer.alloc(10, 1), false)).toBe(false); // --no-multi-alloc
    expect(ext.log).toEqual([]);
    expect([...ext.tables.get(0)!.subarray(0, 2)]).toEqual([100, 0]);
    expect(writeGrainsSync(ext, G, Buffer.alloc(10, 1), false)).toBe(true);
  });
});
