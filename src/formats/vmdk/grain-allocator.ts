import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import { VdiskError } from '../../io/errors';
import { alignUp } from '../../io/safe-int';
import { SYNC_IO_MAX, type HostFile } from '../../io/host-file';
import type { OrderedRangeLock, RangeLease } from '../../io/range-lock';
import { allEnded, started } from '../../io/settle';
import { sliceVector, type CowSource } from './extent';
import { GTE_ZEROED, SECTOR } from './sparse-header';
import * as marker from './stream-marker';

/**
 * THE SEED — QEMU's unmerged "allocate multiple clusters at once" for VMDK:
 * for one request, every missing grain is allocated at once, contiguous at the end of the
 * extent file; head COW + payload + tail COW go out as ONE vectored write (COW from zeros left
 * out: the new space reads as zeros, see writeFreshRun); only then are the
 * grain-table entries of all of them set together (in the cached tables, written back on flush:
 * data → GT → GD). Grains already allocated are written in place, no metadata I/O.
 * With noMultiAlloc the same request goes grain by grain and every entry is written through
 * and flushed at once (QEMU 7.2's vmdk_L2update), so the gain can be measured.
 */

const deflate = promisify(zlib.deflate);

/**
 * What the allocator needs from a sparse extent (sparse-extent.ts implements it; the unit test
 * fakes it): the grain geometry, the grain tables, space at the end of the file, the data file.
 */
export interface GrainSpace {
  readonly fileName: string;
  readonly grainBytes: number;
  /** Entries per grain table. */
  readonly gtEntries: number;
  /** streamOptimized: grains are deflated behind grain markers, never rewritten. */
  readonly compressed: boolean;
  /** The header allows GTE_ZEROED entries. */
  readonly zeroGrainAllowed: boolean;
  /** QEMU's way: grain by grain, every entry written through (to measure the seed's gain). */
  readonly noMultiAlloc: boolean;
  readonly file: Pick<HostFile, 'write' | 'writeSync'>;
  readonly stats: { grainsAllocated: number; dataWrites: number; cowReads: number; zeroGrains: number };
  /**
   * Grains being allocated or zeroed, as exclusive holders of grain ranges: a second writer
   * waits instead of allocating again. Writes to grains already allocated take no lease.
   */
  readonly grainLock: OrderedRangeLock;
  /** Tables of grains [g0, g1): pinned for one request, resident (no I/O needed), loaded. */
  pinTables(g0: number, g1: number): [number, number];
  unpinTables(pinned: [number, number]): void;
  tablesResident(g0: number, g1: number): boolean;
  loadTables(g0: number, g1: number): Promise<void>;
  /** Raw entry of grain g (0: none); tables resident. */
  gte(g: number): number;
  /** Sets grain g's entry in the cached table (written back on flush, after the data). */
  setGte(g: number, value: number): void;
  /** Creates grain table t in memory when it has none yet. */
  ensureTable(t: number): void;
  /** `bytes` of new space at the end of the file; returns its host offset. */
  reserve(bytes: number): number;
  /** Writes grain g's entry through at once and flushes (noMultiAlloc). */
  writeEntryThrough(g: number): Promise<void>;
}

let zeroBuf = Buffer.alloc(1 << 20);
/** A shared all-zero buffer (never written to) for COW-from-zeros and zero writes. */
function zeros(len: number): Buffer {
  if (zeroBuf.length < len) zeroBuf = Buffer.alloc(len);
  return zeroBuf.subarray(0, len);
}

function isZeroGte(ext: GrainSpace, e: number): boolean {
  return e === GTE_ZEROED && ext.zeroGrainAllowed;
}

interface MissingGrain {
  g: number; // grain index within the extent
  wasZero: boolean; // zeroed-grain entry: COW source is zeros, never the parent
}

export async function writeGrains(ext: GrainSpace, offset: number, data: Buffer[], length: number, cow: CowSource | null): Promise<void> {
  const G = ext.grainBytes;
  if (!ext.noMultiAlloc) return writeRun(ext, offset, data, length, cow);
  // QEMU's way: one grain at a time, each entry written through.
  for (let done = 0; done < length;) {
    const n = Math.min(length - done, G - ((offset + done) % G));
    await writeRun(ext, offset + done, sliceVector(data, done, n), n, cow);
    done += n;
  }
}

/** One request (or, without multi-alloc, one grain of it): classify, allocate, write, then map. */
async function writeRun(ext: GrainSpace, offset: number, data: Buffer[], length: number, cow: CowSource | null): Promise<void> {
  const G = ext.grainBytes;
  const end = offset + length;
  const g0 = Math.floor(offset / G);
  const g1 = Math.ceil(end / G);
  const pinned = ext.pinTables(g0, g1);
  try {
    await writePinned(ext, offset, data, length, cow, g0, g1);
  } finally {
    ext.unpinTables(pinned);
  }
}

async function writePinned(
  ext: GrainSpace,
  offset: number,
  data: Buffer[],
  length: number,
  cow: CowSource | null,
  g0: number,
  g1: number,
): Promise<void> {
  const end = offset + length;
  let lease: RangeLease | undefined;
  try {
    let c: Classified;
    for (;;) {
      if (!ext.tablesResident(g0, g1)) {
        await ext.loadTables(g0, g1);
        continue;
      }
      // From here to the first await nothing else runs: classification and the lease are atomic.
      c = classify(ext, offset, end, g0, g1);
      if (c.missing.length === 0 || lease) break;
      // Grains to allocate: hold [g0, g1) until their entries are set, so nobody allocates them too.
      lease = ext.grainLock.acquire(g0, g1, false);
      if (!lease.ready) break;
      await lease.ready; // an earlier request allocates or zeroes grains here: classify again after it
    }
    await allocateAndWrite(ext, offset, end, data, cow, c);
  } finally {
    lease?.release();
  }
}

/**
 * writeGrains done synchronously (Image.writeSync: an O_DIRECT write through the mount, or the
 * merger's send of a small extent), small enough for the main thread, tables resident. Grains
 * already allocated are written in place. New grains are allocated at once when nothing needs
 * copying into them (no parent, or a zeroed grain: their COW reads as zeros, as the new space
 * past the end of the file already does) and no other request is allocating or zeroing these
 * grains: space reserved, each grain's payload written at its place (a zero head or tail left
 * out, as writeFreshRun leaves it out), then the entries set, after the data as
 * allocateAndWrite sets them. Classification, host writes and entries happen in one
 * synchronous step, so nothing can come between them. False: nothing done, use writeGrains.
 */
export function writeGrainsSync(ext: GrainSpace, offset: number, data: Buffer, hasParent: boolean): boolean {
  if (ext.compressed || data.length === 0 || data.length > SYNC_IO_MAX) return false;
  const G = ext.grainBytes;
  const end = offset + data.length;
  const g0 = Math.floor(offset / G);
  const g1 = Math.ceil(end / G);
  if (!ext.tablesResident(g0, g1)) return false;
  const c = classify(ext, offset, end, g0, g1);
  const { missing } = c;
  if (missing.length > 0) {
    if (ext.noMultiAlloc || ext.grainLock.wouldWait(g0, g1, false)) return false;
    if (hasParent && missing.some((m) => !m.wasZero)) return false; // a COW read from the parent
  }
  for (const [s, host, n] of c.inPlace) {
    ext.stats.dataWrites++;
    ext.file.writeSync(data.subarray(s - offset, s - offset + n), host, 'data');
  }
  if (missing.length === 0) return true;
  // Creating a table inserts it into the cache, which may evict a clean table this request still
  // has to set entries in (a request across a table boundary, a crowded cache): pinned, as
  // writeRun pins them, until the entries are set.
  const pinned = ext.pinTables(g0, g1);
  try {
    for (const m of missing) ext.ensureTable(Math.floor(m.g / ext.gtEntries));
    const start = ext.reserve(missing.length * G);
    for (let i = 0; i < missing.length; i++) {
      const gs = missing[i]!.g * G;
      const s = Math.max(offset, gs);
      ext.stats.dataWrites++;
      ext.file.writeSync(data.subarray(s - offset, Math.min(end, gs + G) - offset), start + i * G + (s - gs), 'data');
    }
    // Data is written: now (never before) point the tables at it.
    for (let i = 0; i < missing.length; i++) ext.setGte(missing[i]!.g, (start + i * G) / SECTOR);
  } finally {
    ext.unpinTables(pinned);
  }
  ext.stats.grainsAllocated += missing.length;
  return true;
}

interface Classified {
  /** Host-contiguous runs of grains already allocated: [guest offset, host offset, length]. */
  inPlace: Array<[number, number, number]>;
  missing: MissingGrain[];
}

/** Which grains of [offset, end) are written in place and which need a new grain. Synchronous. */
function classify(ext: GrainSpace, offset: number, end: number, g0: number, g1: number): Classified {
  const G = ext.grainBytes;
  const inPlace: Array<[number, number, number]> = [];
  const missing: MissingGrain[] = [];
  for (let g = g0; g < g1; g++) {
    const e = ext.gte(g);
    const s = Math.max(offset, g * G);
    const n = Math.min(end, (g + 1) * G) - s;
    if (e === 0 || isZeroGte(ext, e)) {
      missing.push({ g, wasZero: e !== 0 });
      continue;
    }
    if (ext.compressed) {
      throw VdiskError.readOnly(`${ext.fileName}: streamOptimized grain ${g} is already written; compressed grains cannot be rewritten`);
    }
    const host = e * SECTOR + (s - g * G);
    const last = inPlace[inPlace.length - 1];
    if (last && last[0] + last[2] === s && last[1] + last[2] === host) last[2] += n;
    else inPlace.push([s, host, n]);
  }
  return { inPlace, missing };
}

/** In-place runs written; missing grains reserved, COW + payload written as one vector, then mapped. */
async function allocateAndWrite(
  ext: GrainSpace,
  offset: number,
  end: number,
  data: Buffer[],
  cow: CowSource | null,
  c: Classified,
): Promise<void> {
  const { missing } = c;
  const inPlace = c.inPlace.map(([s, host, n]) => {
    ext.stats.dataWrites++;
    return started(ext.file.write(sliceVector(data, s - offset, n), host, 'data'));
  });
  try {
    await allocateMissing(ext, offset, end, data, cow, missing);
  } finally {
    // Every in-place run ends before the request does, also when the allocation failed.
    await allEnded(inPlace);
  }
}

/** allocateAndWrite's missing grains: COW fills, the fresh run written, then the table entries. */
async function allocateMissing(
  ext: GrainSpace,
  offset: number,
  end: number,
  data: Buffer[],
  cow: CowSource | null,
  missing: Classified['missing'],
): Promise<void> {
  const G = ext.grainBytes;
  if (missing.length === 0) return;

  for (const m of missing) ext.ensureTable(Math.floor(m.g / ext.gtEntries));
  // Whole-grain pieces, built synchronously; only partial grains (at most the first and the
  // last) wait for a COW read, all at once.
  const fills: Promise<void>[] = [];
  const grains = missing.map((m) => buildGrain(ext, m, offset, end, data, cow, fills));
  if (fills.length) await Promise.all(fills);
  let hostSectors: number[];
  if (ext.compressed) {
    hostSectors = await writeCompressed(ext, missing, grains);
  } else {
    const start = ext.reserve(missing.length * G);
    hostSectors = missing.map((_, i) => (start + i * G) / SECTOR);
    if (ext.noMultiAlloc) {
      // QEMU's way: COW head, payload and COW tail as separate writes.
      for (const p of grains[0]!) {
        ext.stats.dataWrites++;
        await ext.file.write(p.bufs, start + p.at, 'data');
      }
    } else {
      await writeFreshRun(ext, start, grains);
    }
  }
  // A clean table may have been evicted while the data was in flight: bring it back first.
  if (!ext.tablesResident(missing[0]!.g, missing[missing.length - 1]!.g + 1))
    await ext.loadTables(missing[0]!.g, missing[missing.length - 1]!.g + 1);
  // Data is written: now (never before) point the tables at it, all entries together.
  for (let i = 0; i < missing.length; i++) ext.setGte(missing[i]!.g, hostSectors[i]!);
  ext.stats.grainsAllocated += missing.length;
  if (ext.noMultiAlloc) for (const m of missing) await ext.writeEntryThrough(m.g);
}

interface Piece {
  at: number; // byte offset of these buffers within the grain
  bufs: Buffer[];
  /** A COW fill from zeros (no parent, or a zeroed grain): what fresh space reads as anyway. */
  zeros?: true;
}

/**
 * The grains of one request, reserved contiguously at `start`, as ONE vectored write (the seed).
 * Their space lies past the end of the extent file (append-only: `reserve` starts at the file's
 * end), so it reads as zeros until written: a zero COW head or tail is left out rather than
 * written, as QEMU's qcow2 skips COW from zeros into new clusters. A 4 KiB write into a new 64
 * KiB grain then writes 4 KiB, not 64, and the grain's later 4 KiB writes land in a hole as
 * they would in a raw file (a 64 KiB page-cache folio made each of them cost several times more
 * here). A tail left out may leave the grain's end past the end of the file for now: the
 * write-back extends the file over every reserved grain before its data barrier, so no table on
 * disk ever points past the file's end (table-writeback.ts, coverReserved).
 */
async function writeFreshRun(ext: GrainSpace, start: number, grains: Piece[][]): Promise<void> {
  const G = ext.grainBytes;
  const pieces = grains.flatMap((p, i) => p.map((piece) => ({ ...piece, at: start + i * G + piece.at })));
  let first = 0;
  let last = pieces.length - 1;
  if (pieces[first]!.zeros) first++;
  if (last > first && pieces[last]!.zeros) last--;
  const vector: Buffer[] = [];
  for (let i = first; i <= last; i++) for (const b of pieces[i]!.bufs) vector.push(b);
  ext.stats.dataWrites++;
  await ext.file.write(vector, pieces[first]!.at, 'data');
}

/** A whole grain's content: COW head (parent or zeros), the payload, COW tail; COW reads go to `fills`. */
function buildGrain(
  ext: GrainSpace,
  m: MissingGrain,
  offset: number,
  end: number,
  data: Buffer[],
  cow: CowSource | null,
  fills: Promise<void>[],
): Piece[] {
  const G = ext.grainBytes;
  const gs = m.g * G;
  const s = Math.max(offset, gs);
  const e = Math.min(end, gs + G);
  const pieces: Piece[] = [];
  const fill = (at: number, from: number, len: number): Piece => {
    // Without a parent (or over a zeroed grain) the COW source is zeros: a shared buffer, no read.
    if (m.wasZero || !cow) return { at, bufs: [zeros(len)], zeros: true };
    const b = Buffer.allocUnsafe(len);
    ext.stats.cowReads++;
    fills.push(cow(from, b));
    return { at, bufs: [b] };
  };
  if (s > gs) pieces.push(fill(0, gs, s - gs));
  pieces.push({ at: s - gs, bufs: sliceVector(data, s - offset, e - s) });
  if (e < gs + G) pieces.push(fill(e - gs, e, gs + G - e));
  return pieces;
}

/** streamOptimized: each grain deflated behind its grain marker, appended at the end, one write. */
async function writeCompressed(ext: GrainSpace, missing: MissingGrain[], grains: Piece[][]): Promise<number[]> {
  const compressed = await Promise.all(
    grains.map(async (p, i) => {
      const whole = Buffer.concat(p.flatMap((x) => x.bufs));
      const z = await deflate(whole);
      const recLen = alignUp(marker.GRAIN_MARKER_SIZE + z.length, SECTOR);
      const lba = (missing[i]!.g * ext.grainBytes) / SECTOR;
      return [marker.serializeGrainMarker(lba, z.length), z, Buffer.alloc(recLen - marker.GRAIN_MARKER_SIZE - z.length)];
    }),
  );
  const total = compressed.reduce((n, r) => n + r[0]!.length + r[1]!.length + r[2]!.length, 0);
  const start = ext.reserve(total);
  const sectors: number[] = [];
  let at = start;
  for (const r of compressed) {
    sectors.push(at / SECTOR);
    at += r[0]!.length + r[1]!.length + r[2]!.length;
  }
  ext.stats.dataWrites++;
  await ext.file.write(compressed.flat(), start, 'data');
  return sectors;
}

/**
 * Zeroes [offset, offset+length): whole grains become zeroed-grain entries where the header
 * allows; grains that already read as zeros (no table entry, no parent) are left alone;
 * everything else gets real zeros through the write path.
 */
export async function writeZeroGrains(
  ext: GrainSpace,
  offset: number,
  length: number,
  cow: CowSource | null,
  hasParent: boolean,
): Promise<void> {
  const G = ext.grainBytes;
  const end = offset + length;
  let pos = offset;
  while (pos < end) {
    // Bounded batches keep memory small for huge ranges.
    const batchEnd = Math.min(end, (Math.floor(pos / G) + 256) * G);
    const g0 = Math.floor(pos / G);
    const g1 = Math.ceil(batchEnd / G);
    const writes: Array<[number, number]> = [];
    const pinned = ext.pinTables(g0, g1);
    // Held while entries change: waits for grains being allocated here, and makes them wait.
    const lease = ext.grainLock.acquire(g0, g1, false);
    try {
      if (lease.ready) await lease.ready;
      while (!ext.tablesResident(g0, g1)) await ext.loadTables(g0, g1);
      const zeroed: number[] = [];
      for (let g = g0; g < g1; g++) {
        const s = Math.max(pos, g * G);
        const e = Math.min(batchEnd, (g + 1) * G);
        const entry = ext.gte(g);
        if ((entry === 0 && !hasParent) || isZeroGte(ext, entry)) continue; // already reads as zeros
        if (e - s === G && ext.zeroGrainAllowed && !ext.compressed) zeroed.push(g);
        else {
          const last = writes[writes.length - 1];
          if (last && last[0] + last[1] === s) last[1] += e - s;
          else writes.push([s, e - s]);
        }
      }
      for (const g of zeroed) {
        ext.ensureTable(Math.floor(g / ext.gtEntries));
        ext.setGte(g, GTE_ZEROED);
        ext.stats.zeroGrains++;
      }
      if (ext.noMultiAlloc) for (const g of zeroed) await ext.writeEntryThrough(g);
    } finally {
      lease.release(); // before the writes below, which take their own
      ext.unpinTables(pinned);
    }
    for (const [s, n] of writes) {
      for (let d = 0; d < n;) {
        const k = Math.min(n - d, 1 << 20);
        await writeGrains(ext, s + d, [zeros(k)], k, cow);
        d += k;
      }
    }
    pos = batchEnd;
  }
}
