/**
 * "Where does this guest range live?" — answered from the L1 table and cached L2 tables only,
 * synchronously, so lock-free fast paths can use it. mapFirst answers the shared data path's
 * question (src/formats/data-path.ts) for the first piece; mapSync lists every piece. Neither
 * answers when an L2 table the range needs is not cached (the caller then loads it under the
 * image lock and asks again).
 */
import { VdiskError } from '../../io/errors';
import { COMPRESSED, DATA, type Mapping, newMapping, UNALLOCATED, ZERO } from '../data-path';
import type { MetadataCache } from './metadata-cache';
import {
  COMPRESSED_HI,
  COPIED_HI,
  hostOf,
  OFFSET_HI_MASK,
  OFFSET_LO_MASK,
  KIND_COMPRESSED,
  KIND_NORMAL,
  KIND_UNALLOCATED,
  KIND_ZERO,
  L2Layout,
  l1Offset,
  l2AllocBits,
  l2Compressed,
  l2HostOffset,
  l2Kind,
  l2ZeroBits,
} from './table-entry';

// The L2 kinds are the shared data path's kinds (mapFirst fills a Mapping without translating).
const kindsAgree: [typeof KIND_UNALLOCATED, typeof KIND_ZERO, typeof KIND_NORMAL, typeof KIND_COMPRESSED] = [
  UNALLOCATED,
  ZERO,
  DATA,
  COMPRESSED,
];
void kindsAgree;

export interface Piece {
  guest: number; // guest offset
  length: number; // bytes
  kind: number; // KIND_*
  host: number; // normal: host offset of `guest`; compressed: host offset of the compressed bytes
  cSize: number; // compressed: bytes stored
  cluster: number; // compressed: guest offset of the cluster start
}

/** Where mapping finds L2 tables: the metadata cache, or one table read past it (Qcow2Image.map). */
export interface TablePeek {
  peek(offset: number): Buffer | undefined;
}

export interface MapContext {
  clusterBits: number;
  /** 2 ** clusterBits, kept: `**` is a call into libm's pow on every use, per request. */
  clusterSize: number;
  layout: L2Layout;
  l2Entries: number;
  l1: Buffer;
  l1Size: number;
  cache: TablePeek;
}

/** The map context of an open image: `extended` L2 entries (16 bytes, subclusters) or standard (8). */
export function newMapContext(clusterBits: number, extended: boolean, dataFile: boolean, l1: Buffer, cache: MetadataCache): MapContext {
  const entrySize = extended ? 16 : 8;
  return {
    clusterBits,
    clusterSize: 2 ** clusterBits,
    layout: { clusterBits, extended, entrySize, dataFile },
    l2Entries: 2 ** clusterBits / entrySize,
    l1,
    l1Size: l1.length / 8,
    cache,
  };
}

export function l2TableOffset(ctx: MapContext, l1i: number): number {
  if (l1i >= ctx.l1Size) return 0;
  const off = l1Offset(ctx.l1, l1i);
  // Alignment from the low 32 bits (clusters are at most 2 MiB): `%` on a double is fmod.
  if (((off >>> 0) & (ctx.clusterSize - 1)) !== 0)
    throw VdiskError.corrupt(`qcow2 L2 table offset ${off} (L1 index ${l1i}) not cluster aligned`);
  return off;
}

/**
 * The first piece of [offset, offset+length) into `out` (the shared data path's question): its
 * kind, how far it holds (clusters of one kind, DATA ones contiguous on the host too; one
 * compressed cluster at most), for DATA the host offset of `offset`, for COMPRESSED the stored
 * bytes and the cluster's guest offset. False when the L2 table of `offset` is not cached; a
 * piece also ends where the next table is not cached. Allocates nothing.
 */
export function mapFirst(ctx: MapContext, offset: number, length: number, out: Mapping): boolean {
  const cs = ctx.clusterSize;
  const n = ctx.l2Entries;
  const l = ctx.layout;
  const end = offset + length;
  let kind = -1;
  let host = 0;
  let pos = offset;
  let tl1 = -1;
  let t: Buffer | undefined;
  while (pos < end) {
    const gc = Math.floor(pos / cs);
    const l1i = Math.floor(gc / n);
    if (l1i !== tl1) {
      const l2off = l2TableOffset(ctx, l1i);
      t = l2off === 0 ? undefined : ctx.cache.peek(l2off);
      if (l2off !== 0 && !t) break;
      tl1 = l1i;
    }
    let k: number = KIND_UNALLOCATED;
    let h = 0;
    let stop: number;
    if (!t) {
      stop = Math.min(end, (l1i + 1) * n * cs);
    } else {
      const l2i = gc % n;
      const cStart = gc * cs;
      stop = Math.min(end, cStart + cs);
      if (!l.extended) {
        // Standard entries: the first decoded here, the rest of this table by continueRun's
        // integer-only loop. It runs per cluster of every read and every map, 4 Mi times over
        // a 256 GiB disk. A compressed first entry is left to the general path below.
        const hi = t.readUInt32BE(l2i * 8);
        if (!(hi & COMPRESSED_HI)) {
          const lo = t.readUInt32BE(l2i * 8 + 4);
          const hc = hostOf(hi, lo);
          const kj = lo & 1 ? KIND_ZERO : hc === 0 && !(l.dataFile && hi & COPIED_HI) ? KIND_UNALLOCATED : KIND_NORMAL;
          let hj = 0;
          if (kj === KIND_NORMAL) {
            // Alignment from the low word alone (clusters are at most 2 MiB): `%` on a double is fmod.
            if ((lo & OFFSET_LO_MASK & (cs - 1)) !== 0) throw VdiskError.corrupt(`qcow2 data cluster offset ${hc} not cluster aligned`);
            hj = hc + (pos - cStart);
          }
          if (kind < 0) {
            kind = kj;
            host = hj;
          } else if (kj !== kind || (kj === KIND_NORMAL && hj !== host + (pos - offset))) {
            break;
          }
          const tableEnd = Math.min(end, (l1i + 1) * n * cs);
          const last = Math.floor((tableEnd - 1 - l1i * n * cs) / cs); // the entry holding tableEnd-1
          // A view for the run's loop only when there is a run: a small read stays in one entry.
          const more =
            last > l2i
              ? continueRun(new DataView(t.buffer, t.byteOffset, t.length), l2i + 1, last + 1, kj, hi | 0, lo | 0, cs, l.dataFile === true)
              : 0;
          pos = Math.min(tableEnd, cStart + (1 + more) * cs);
          if (l2i + more < last) break; // an entry that differs (or is compressed) ends the piece
          continue; // the next table, from the top
        }
      }
      k = l2Kind(t, l2i, l);
      if (k === KIND_COMPRESSED) {
        if (kind >= 0) break;
        const c = l2Compressed(t, l2i, l);
        out.kind = k;
        out.length = stop - pos;
        out.host = c.host;
        out.size = c.size;
        out.unit = cStart;
        return true;
      }
      if (!l.extended) {
        if (k === KIND_NORMAL) h = alignedHost(t, l2i, l, cs) + (pos - cStart);
      } else {
        const hc = alignedHost(t, l2i, l, cs);
        const alloc = l2AllocBits(t, l2i, l);
        const zero = l2ZeroBits(t, l2i, l);
        if (alloc & zero) throw VdiskError.corrupt(`qcow2 subcluster both allocated and zero (cluster ${gc})`);
        if (alloc !== 0 && hc === 0 && !l.dataFile)
          throw VdiskError.corrupt(`qcow2 allocated subclusters without a host cluster (cluster ${gc})`);
        const sc = cs / 32;
        const si = Math.floor((pos - cStart) / sc);
        const bit = 1 << si;
        k = alloc & bit ? KIND_NORMAL : zero & bit ? KIND_ZERO : KIND_UNALLOCATED;
        if (k === KIND_NORMAL) h = hc + (pos - cStart);
        stop = Math.min(stop, cStart + (si + 1) * sc);
      }
    }
    if (kind < 0) {
      kind = k;
      host = h;
    } else if (k !== kind || (k === KIND_NORMAL && h !== host + (pos - offset))) {
      break;
    }
    pos = stop;
  }
  if (kind < 0) return false;
  out.kind = kind;
  out.length = pos - offset;
  out.host = host;
  return true;
}

function alignedHost(t: Buffer, l2i: number, l: L2Layout, cs: number): number {
  const host = l2HostOffset(t, l2i, l);
  if (host % cs !== 0) throw VdiskError.corrupt(`qcow2 data cluster offset ${host} not cluster aligned`);
  return host;
}

/**
 * How many standard entries [from, to) continue a run whose previous entry was (hi, lo) of kind
 * `kind`: the same kind, and for data the next host cluster each. Signed 32-bit integers only:
 * a word above 2^31 held as a double makes the optimizer give the loop up ("lost precision").
 */
function continueRun(w: DataView, from: number, to: number, kind: number, hi: number, lo: number, cs: number, dataFile: boolean): number {
  const COMPRESSED = COMPRESSED_HI | 0;
  const HI_MASK = OFFSET_HI_MASK | 0;
  const LO_MASK = OFFSET_LO_MASK | 0;
  let j = from;
  if (kind === KIND_NORMAL) {
    let eHi = hi & HI_MASK;
    let eLo = lo & LO_MASK;
    for (; j < to; j++) {
      const nLo = (eLo + cs) | 0;
      if (eLo < 0 && nLo >= 0) eHi = (eHi + 1) | 0; // carried into the high word (cs < 2^31)
      eLo = nLo;
      const h = w.getInt32(j * 8);
      const l = w.getInt32(j * 8 + 4);
      if (h & COMPRESSED || l & 1 || (h & HI_MASK) !== eHi || (l & LO_MASK) !== eLo) break;
    }
  } else if (kind === KIND_ZERO) {
    for (; j < to; j++) if (w.getInt32(j * 8) & COMPRESSED || !(w.getInt32(j * 8 + 4) & 1)) break;
  } else {
    for (; j < to; j++) {
      const h = w.getInt32(j * 8);
      const l = w.getInt32(j * 8 + 4);
      // h < 0: COPIED, which marks a data file's cluster at host offset 0 as allocated.
      if (h & COMPRESSED || l & 1 || h & HI_MASK || l & LO_MASK || (dataFile && h < 0)) break;
    }
  }
  return j - from;
}

/** Every piece of a range (mapFirst until the end), or undefined when a table it needs is not cached. */
export function mapSync(ctx: MapContext, offset: number, length: number): Piece[] | undefined {
  const out: Piece[] = [];
  const m = newMapping();
  const end = offset + length;
  for (let pos = offset; pos < end; pos += m.length) {
    if (!mapFirst(ctx, pos, end - pos, m)) return undefined;
    const compressed = m.kind === KIND_COMPRESSED;
    out.push({
      guest: pos,
      length: m.length,
      kind: m.kind,
      host: m.kind === KIND_NORMAL || compressed ? m.host : 0,
      cSize: compressed ? m.size : 0,
      cluster: compressed ? m.unit : 0,
    });
  }
  return out;
}

/** L2 table offsets (non-zero) that a guest range needs. */
export function tablesFor(ctx: MapContext, offset: number, length: number): number[] {
  const span = ctx.l2Entries * ctx.clusterSize;
  const out: number[] = [];
  const last = Math.floor((offset + Math.max(length, 1) - 1) / span);
  for (let l1i = Math.floor(offset / span); l1i <= last; l1i++) {
    const o = l2TableOffset(ctx, l1i);
    if (o) out.push(o);
  }
  return out;
}
