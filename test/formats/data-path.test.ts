import { describe, expect, it } from 'vitest';
import {
  checkRange,
  COMPRESSED,
  DATA,
  type FormatAccess,
  type Inflater,
  type Mapping,
  readBacking,
  readThrough,
  readThroughSync,
  UNALLOCATED,
  ZERO,
} from '../../src/formats/data-path';
import type { Image } from '../../src/formats/types';
import { VdiskError } from '../../src/io/errors';
import { SYNC_CACHED_READ_MAX } from '../../src/io/host-file';

/**
 * The shared data path against a hand-built FormatAccess: a list of guest segments with their
 * kind, answered synchronously or only through map() (as a driver whose tables are not cached).
 */

/** A host file: `bytes` at offset 0; reads past its end give zeros; optionally held until released. */
class FakeFile {
  readonly path = '/fake/host';
  readonly reads: Array<{ pos: number; length: number }> = [];
  private held: Array<() => void> | undefined;
  failAt: number | undefined;
  /** readSync declines, as HostFile's does for a large read the page cache does not hold. */
  notCached = false;

  constructor(readonly bytes: Buffer) {}

  hold(): void {
    this.held = [];
  }

  release(): void {
    const h = this.held ?? [];
    this.held = undefined;
    for (const r of h) r();
  }

  readSync(into: Buffer, pos: number): boolean {
    if (this.notCached) return false;
    this.reads.push({ pos, length: into.length });
    into.fill(0);
    this.bytes.copy(into, 0, pos, pos + Math.max(0, Math.min(into.length, this.bytes.length - pos)));
    return true;
  }

  async read(into: Buffer, pos: number): Promise<number> {
    this.reads.push({ pos, length: into.length });
    if (this.held) await new Promise<void>((r) => this.held!.push(r));
    if (pos === this.failAt) throw VdiskError.io(`read failed at ${pos}`);
    into.fill(0);
    const n = Math.max(0, Math.min(into.length, this.bytes.length - pos));
    this.bytes.copy(into, 0, pos, pos + n);
    return n;
  }
}

/** A backing image of `size` bytes whose byte i is (i * 7) & 0xff; records its reads. */
function fakeBacking(size: number): Image & { reads: Array<[number, number]> } {
  const reads: Array<[number, number]> = [];
  return {
    format: 'raw',
    path: '/fake/backing',
    virtualSize: size,
    readOnly: true,
    reads,
    async read(this: { path: string; virtualSize: number }, offset: number, into: Buffer) {
      checkRange(this, offset, into.length);
      reads.push([offset, into.length]);
      for (let i = 0; i < into.length; i++) into[i] = ((offset + i) * 7) & 0xff;
    },
  } as unknown as Image & { reads: Array<[number, number]> };
}

interface Segment {
  start: number;
  length: number;
  kind: number;
  host?: number; // DATA: host offset of `start`; COMPRESSED: host offset of the unit
  unit?: number; // COMPRESSED: guest offset of the unit
  sync?: boolean; // answered by mapSync (default) or only by map()
}

class FakeAccess implements FormatAccess {
  readonly asked: Array<[number, number, 'sync' | 'async']> = [];

  constructor(
    readonly segments: Segment[],
    readonly file: FakeFile,
    readonly backing: Image | undefined,
    readonly inflater?: Inflater,
  ) {}

  private answer(offset: number, length: number, out: Mapping): void {
    const s = this.segments.find((x) => x.start <= offset && offset < x.start + x.length);
    if (!s) throw new Error(`no segment at ${offset}`);
    out.kind = s.kind;
    out.length = Math.min(length, s.start + s.length - offset);
    if (s.kind === DATA) {
      out.file = this.file;
      out.host = s.host! + (offset - s.start);
    } else if (s.kind === COMPRESSED) {
      out.host = s.host!;
      out.size = 99;
      out.unit = s.unit!;
      out.inflater = this.inflater;
    }
  }

  mapSync(offset: number, length: number, out: Mapping): boolean {
    const s = this.segments.find((x) => x.start <= offset && offset < x.start + x.length);
    if (s && s.sync === false) return false;
    this.asked.push([offset, length, 'sync']);
    this.answer(offset, length, out);
    return true;
  }

  async map(offset: number, length: number, out: Mapping): Promise<void> {
    this.asked.push([offset, length, 'async']);
    await new Promise((r) => setImmediate(r));
    this.answer(offset, length, out);
  }
}

const host = Buffer.alloc(1 << 16);
for (let i = 0; i < host.length; i++) host[i] = (i * 13 + 5) & 0xff;

/** Inflates unit `u` (guest offset) to 8 KiB of bytes (u/1024 + i) & 0xff. */
class FakeInflater implements Inflater {
  readonly calls: Array<[number, number, number]> = [];
  async inflate(h: number, size: number, unit: number): Promise<Buffer> {
    this.calls.push([h, size, unit]);
    const b = Buffer.alloc(8192);
    for (let i = 0; i < b.length; i++) b[i] = (unit / 1024 + i) & 0xff;
    return b;
  }
}

describe('readThrough', () => {
  it('fills data, zero, unallocated and compressed pieces, sync and async answers alike', async () => {
    const backing = fakeBacking(1 << 20);
    const inflater = new FakeInflater();
    const segs: Segment[] = [
      { start: 0, length: 4096, kind: DATA, host: 8192 },
      { start: 4096, length: 4096, kind: ZERO },
      { start: 8192, length: 8192, kind: UNALLOCATED, sync: false },
      { start: 16384, length: 8192, kind: COMPRESSED, host: 40000, unit: 16384 },
      { start: 24576, length: 8192, kind: DATA, host: 100, sync: false },
    ];
    const file = new FakeFile(host);
    const a = new FakeAccess(segs, file, backing, inflater);
    // Start inside the first piece and end inside the compressed unit's neighbour.
    const into = Buffer.alloc(30000, 0xee);
    const offset = 1000;
    await readThrough(a, offset, into);
    for (let i = 0; i < into.length; i++) {
      const g = offset + i;
      let want: number;
      if (g < 4096) want = host[8192 + g]!;
      else if (g < 8192) want = 0;
      else if (g < 16384) want = (g * 7) & 0xff;
      else if (g < 24576) want = (16384 / 1024 + (g - 16384)) & 0xff;
      else want = host[100 + (g - 24576)]!;
      if (into[i] !== want) throw new Error(`byte ${g}: ${into[i]} != ${want}`);
    }
    // One question per piece, each for the rest of the request; async only where the fake says so.
    expect(a.asked).toEqual([
      [1000, 30000, 'sync'],
      [4096, 26904, 'sync'],
      [8192, 22808, 'async'],
      [16384, 14616, 'sync'],
      [24576, 6424, 'async'],
    ]);
    expect(inflater.calls).toEqual([[40000, 99, 16384]]);
    expect(backing.reads).toEqual([[8192, 8192]]);
  });

  it('reads what a shorter backing image has and zeros past its end (no read past it)', async () => {
    const backing = fakeBacking(10000);
    const a = new FakeAccess([{ start: 0, length: 1 << 20, kind: UNALLOCATED }], new FakeFile(host), backing);
    const into = Buffer.alloc(8192, 0xee);
    await readThrough(a, 6000, into);
    for (let i = 0; i < into.length; i++) expect(into[i]).toBe(6000 + i < 10000 ? ((6000 + i) * 7) & 0xff : 0);
    expect(backing.reads).toEqual([[6000, 4000]]);
    const past = Buffer.alloc(4096, 0xee);
    await readThrough(a, 20000, past);
    expect(past.equals(Buffer.alloc(4096))).toBe(true);
    expect(backing.reads).toHaveLength(1);
  });

  it('reads unallocated ranges as zeros without a backing image', async () => {
    const a = new FakeAccess([{ start: 0, length: 1 << 20, kind: UNALLOCATED }], new FakeFile(host), undefined);
    const into = Buffer.alloc(4096, 0xee);
    await readThrough(a, 4096, into);
    expect(into.equals(Buffer.alloc(4096))).toBe(true);
  });

  it('readBacking on its own: whole, partial, none', async () => {
    const b = fakeBacking(100);
    const x = Buffer.alloc(50, 1);
    await readBacking(b, 80, x);
    expect([...x.subarray(0, 20)]).toEqual(Array.from({ length: 20 }, (_, i) => ((80 + i) * 7) & 0xff));
    expect(x.subarray(20).equals(Buffer.alloc(30))).toBe(true);
    const y = Buffer.alloc(10, 1);
    await readBacking(undefined, 0, y);
    expect(y.equals(Buffer.alloc(10))).toBe(true);
  });

  it('issues every host read before awaiting any (they run together)', async () => {
    const file = new FakeFile(host);
    const segs: Segment[] = [
      { start: 0, length: 4096, kind: DATA, host: 0 },
      { start: 4096, length: 4096, kind: DATA, host: 20000 },
      { start: 8192, length: 4096, kind: DATA, host: 9000 },
    ];
    file.hold();
    const p = readThrough(new FakeAccess(segs, file, undefined), 0, Buffer.alloc(12288));
    await new Promise((r) => setImmediate(r));
    expect(file.reads).toEqual([
      { pos: 0, length: 4096 },
      { pos: 20000, length: 4096 },
      { pos: 9000, length: 4096 },
    ]);
    file.release();
    await p;
  });

  it('a failed host read fails the request after the other pieces settled, also across an async answer', async () => {
    const file = new FakeFile(host);
    file.failAt = 0;
    const segs: Segment[] = [
      { start: 0, length: 4096, kind: DATA, host: 0 },
      { start: 4096, length: 4096, kind: DATA, host: 4096, sync: false },
      { start: 8192, length: 4096, kind: DATA, host: 8192 },
    ];
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      await expect(readThrough(new FakeAccess(segs, file, undefined), 0, Buffer.alloc(12288))).rejects.toThrow('read failed at 0');
      await new Promise((r) => setTimeout(r, 20));
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    expect(unhandled).toEqual([]);
    expect(file.reads.map((r) => r.pos)).toEqual([0, 4096, 8192]);
  });

  it('a mapping error after issued reads waits for them, then throws', async () => {
    const file = new FakeFile(host);
    file.hold();
    const segs: Segment[] = [{ start: 0, length: 4096, kind: DATA, host: 0 }]; // nothing maps past 4096
    let settled = false;
    const p = readThrough(new FakeAccess(segs, file, undefined), 0, Buffer.alloc(8192)).finally(() => (settled = true));
    p.catch(() => undefined);
    await new Promise((r) => setImmediate(r));
    expect(settled).toBe(false); // the read of the first piece is still in flight
    file.release();
    await expect(p).rejects.toThrow('no segment at 4096');
  });

  it('refuses an answer of no bytes or more than asked (no endless loop)', async () => {
    const bad = (n: number): FormatAccess => ({
      backing: undefined,
      mapSync: (_o, _l, out) => {
        out.kind = ZERO;
        out.length = n;
        return true;
      },
      map: async () => undefined,
    });
    await expect(readThrough(bad(0), 0, Buffer.alloc(10))).rejects.toMatchObject({ code: 'EIO' });
    await expect(readThrough(bad(11), 0, Buffer.alloc(10))).rejects.toMatchObject({ code: 'EIO' });
  });

  it('refuses a compressed unit that does not hold the range', async () => {
    const a = new FakeAccess(
      [{ start: 0, length: 65536, kind: COMPRESSED, host: 0, unit: 0 }],
      new FakeFile(host),
      undefined,
      new FakeInflater(),
    );
    await expect(readThrough(a, 4096, Buffer.alloc(8192))).rejects.toMatchObject({ code: 'ECORRUPT' });
  });

  it('an empty request asks nothing', async () => {
    const a = new FakeAccess([], new FakeFile(host), undefined);
    await readThrough(a, 0, Buffer.alloc(0));
    expect(a.asked).toEqual([]);
  });
});

describe('readThroughSync', () => {
  it('fills data and zero pieces (and unallocated ones without a backing image) like readThrough', async () => {
    const segs: Segment[] = [
      { start: 0, length: 4096, kind: DATA, host: 8192 },
      { start: 4096, length: 4096, kind: ZERO },
      { start: 8192, length: 8192, kind: UNALLOCATED },
      { start: 16384, length: 8192, kind: DATA, host: 100 },
    ];
    const sync = Buffer.alloc(20000, 0xee);
    const viaAsync = Buffer.alloc(20000, 0x11);
    expect(readThroughSync(new FakeAccess(segs, new FakeFile(host), undefined), 1000, sync)).toBe(true);
    await readThrough(new FakeAccess(segs, new FakeFile(host), undefined), 1000, viaAsync);
    expect(sync.equals(viaAsync)).toBe(true);
    expect(sync.subarray(0, 3096).equals(host.subarray(9192, 12288))).toBe(true);
  });

  it('declines, having read nothing, when a piece needs waiting: backing, compressed, uncached mapping', () => {
    const cases: Array<{ seg: Segment; backing: Image | undefined }> = [
      { seg: { start: 4096, length: 4096, kind: UNALLOCATED }, backing: fakeBacking(1 << 20) },
      { seg: { start: 4096, length: 4096, kind: COMPRESSED, host: 40000, unit: 4096 }, backing: undefined },
      { seg: { start: 4096, length: 4096, kind: ZERO, sync: false }, backing: undefined },
    ];
    for (const c of cases) {
      const file = new FakeFile(host);
      const a = new FakeAccess([{ start: 0, length: 4096, kind: DATA, host: 0 }, c.seg], file, c.backing, new FakeInflater());
      const into = Buffer.alloc(8192, 0xee);
      expect(readThroughSync(a, 0, into)).toBe(false);
      expect(file.reads).toEqual([]);
      expect(into.every((b) => b === 0xee)).toBe(true);
    }
  });

  it('reads up to one FUSE request of data when the host file can at once, and declines beyond or when it cannot', () => {
    const big = Buffer.alloc(SYNC_CACHED_READ_MAX + 4096);
    for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE(i + 7, i);
    const file = new FakeFile(big);
    const a = new FakeAccess([{ start: 0, length: big.length, kind: DATA, host: 0 }], file, undefined);
    const into = Buffer.alloc(SYNC_CACHED_READ_MAX);
    expect(readThroughSync(a, 0, into)).toBe(true);
    expect(into.equals(big.subarray(0, into.length))).toBe(true);
    // More than the largest request: declined before any read.
    file.reads.length = 0;
    expect(readThroughSync(a, 0, Buffer.alloc(big.length))).toBe(false);
    expect(file.reads).toEqual([]);
    // The host file declines (not in its page cache): so does the data path; readThrough serves it.
    file.notCached = true;
    expect(readThroughSync(a, 0, into)).toBe(false);
  });
});

describe('checkRange', () => {
  const img = { path: '/x/disk.qcow2', virtualSize: 1 << 20 };
  it('accepts ranges within the image, up to its end', () => {
    expect(() => checkRange(img, 0, 1 << 20)).not.toThrow();
    expect(() => checkRange(img, (1 << 20) - 1, 1)).not.toThrow();
    expect(() => checkRange(img, 1 << 20, 0)).not.toThrow();
  });
  it('refuses past the end, negative, fractional and unsafe numbers with one EINVAL line', () => {
    for (const [o, n] of [
      [1 << 20, 1],
      [-1, 10],
      [0, -1],
      [0.5, 1],
      [0, Number.NaN],
      [2 ** 53, 0],
    ] as Array<[number, number]>) {
      let err: unknown;
      try {
        checkRange(img, o, n);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(VdiskError);
      expect((err as VdiskError).code).toBe('EINVAL');
      expect((err as VdiskError).message).toBe(`range ${o}+${n} past the end of /x/disk.qcow2 (${1 << 20} bytes)`);
    }
  });
});
