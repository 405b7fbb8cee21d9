/**
 * The merger's pending writes: disjoint byte ranges, sorted by offset, each holding its bytes in
 * one contiguous buffer. A write that touches (overlaps or abuts) pending extents is merged into
 * them at call time, so the byte order of overlapping writes is their issue order (rule 4).
 *
 * Cost: a binary search per write; the sequential-append case copies into spare capacity of the
 * extent it extends (the slab grows x16 up to `maxBytes`, so a 1 MiB extent of 4 KiB writes
 * costs two small reallocations). Inserting a new extent is an array splice (memmove).
 */
import { PAGE_SIZE } from './pages';

export interface PendingExtent {
  start: number; // guest offset of the first pending byte
  end: number; // guest offset just past the last pending byte
  buf: Buffer; // bytes [start, end) at buf[0 .. end-start); capacity may be larger
  /** Holds bytes of a write already acknowledged to its caller: losing them must be reported (rule 5). */
  acked: boolean;
  /** The put() count at its last write: how long it has been left alone (oldestIdle). */
  touched: number;
  /** Its place in the age queue; emptied when the extent leaves the set, so the queue holds no buffer. */
  slot: AgeSlot;
}

interface AgeSlot {
  x: PendingExtent | undefined;
}

/** Full slabs kept for reuse: a fresh 1 MiB buffer costs 256 page faults (zeroed pages) on its first fill. */
const SPARE_SLABS = 4;
/**
 * One-page buffers kept for reuse (1 MiB of them): a random 4 KiB write's extent is one page, and
 * Buffer.allocUnsafe(4096) is not served from Node's pool (only sizes below 4 KiB are), so each
 * write made a fresh ArrayBuffer for the garbage collector.
 */
const SPARE_PAGES = 256;

export class PendingExtents {
  private readonly list: PendingExtent[] = [];
  private readonly spare: Buffer[] = [];
  private readonly sparePages: Buffer[] = [];
  /** Extents in the order they were made (stale entries skipped lazily): oldestIdle's queue. */
  private ageQueue: AgeSlot[] = [];
  private ageHead = 0;
  private puts = 0;
  /** Sum of (end - start) over all extents. */
  bytes = 0;
  /** Whether the last put() joined (overlapped or abutted) an extent already pending. */
  lastPutJoined = false;

  constructor(private readonly slabBytes: number) {}

  get size(): number {
    return this.list.length;
  }

  /**
   * Copies `data` (once) into the pending set at guest offset `start`; returns the extent now
   * holding it. `reserve`: capacity for a new extent (a stream continuing past a sent extent).
   */
  put(start: number, data: Buffer, acked: boolean, reserve = 0): PendingExtent {
    const end = start + data.length;
    const list = this.list;
    const now = ++this.puts;
    const i = this.firstEndingAtOrAfter(start);
    let j = i;
    while (j < list.length && list[j]!.start <= end) j++;

    this.lastPutJoined = i !== j;
    if (i === j) {
      const buf = this.alloc(Math.max(data.length, reserve));
      data.copy(buf);
      const x = this.made({ start, end, buf, acked, touched: now, slot: { x: undefined } });
      list.splice(i, 0, x);
      this.bytes += data.length;
      return x;
    }

    const first = list[i]!;
    if (j === i + 1 && start >= first.start && end - first.start <= first.buf.length) {
      // Fits inside the extent's slab: the sequential-append fast path.
      data.copy(first.buf, start - first.start);
      if (end > first.end) {
        this.bytes += end - first.end;
        first.end = end;
      }
      first.acked ||= acked;
      first.touched = now;
      return first;
    }

    // Reallocate one slab for the union of the touched extents and the new write.
    const last = list[j - 1]!;
    const newStart = Math.min(start, first.start);
    const newEnd = Math.max(end, last.end);
    const needed = newEnd - newStart;
    const grown = Math.min(this.slabBytes, first.buf.length * 16);
    const buf = this.alloc(Math.max(needed, grown));
    let wasAcked = acked;
    for (let k = i; k < j; k++) {
      const x = list[k]!;
      x.buf.copy(buf, x.start - newStart, 0, x.end - x.start);
      this.bytes -= x.end - x.start;
      wasAcked ||= x.acked;
      x.slot.x = undefined;
      if (x.buf.buffer !== data.buffer) this.recycle(x.buf); // copied out, and no longer in the list
    }
    data.copy(buf, start - newStart);
    const merged = this.made({ start: newStart, end: newEnd, buf, acked: wasAcked, touched: now, slot: { x: undefined } });
    list.splice(i, j - i, merged);
    this.bytes += needed;
    return merged;
  }

  /**
   * Gives a slab back for reuse. Only for a buffer nothing refers to any more: an extent out of
   * the list whose driver write has finished.
   */
  recycle(buf: Buffer): void {
    if (buf.byteOffset !== 0 || buf.buffer.byteLength !== buf.length) return; // a view into something else
    if (buf.length === this.slabBytes) {
      if (this.spare.length < SPARE_SLABS) this.spare.push(buf);
    } else if (buf.length === PAGE_SIZE && this.sparePages.length < SPARE_PAGES) {
      this.sparePages.push(buf);
    }
  }

  /** A buffer of its own (never a view into Node's shared pool), so recycle() can take it back. */
  private alloc(bytes: number): Buffer {
    if (bytes === this.slabBytes) return this.spare.pop() ?? Buffer.allocUnsafeSlow(bytes);
    if (bytes === PAGE_SIZE) return this.sparePages.pop() ?? Buffer.allocUnsafeSlow(bytes);
    return Buffer.allocUnsafe(bytes);
  }

  /** Extents holding any byte of [from, to). */
  overlapping(from: number, to: number): PendingExtent[] {
    const out: PendingExtent[] = [];
    const list = this.list;
    for (let k = this.firstEndingAtOrAfter(from + 1); k < list.length && list[k]!.start < to; k++) out.push(list[k]!);
    return out;
  }

  remove(x: PendingExtent): void {
    const k = this.firstEndingAtOrAfter(x.end);
    if (this.list[k] !== x) throw new Error('merger: removing an extent that is not pending');
    this.list.splice(k, 1);
    this.bytes -= x.end - x.start;
    x.slot.x = undefined;
  }

  /** Takes every extent out (in offset order). */
  takeAll(): PendingExtent[] {
    const all = this.list.splice(0, this.list.length);
    this.bytes = 0;
    for (const x of all) x.slot.x = undefined;
    this.ageQueue = [];
    this.ageHead = 0;
    return all;
  }

  /**
   * The oldest-made extent not written to in the last `minAge` put()s, or undefined. Extents
   * written more recently (a stream still growing) go to the back of the queue, a few per call,
   * so the cost stays O(1) amortized.
   */
  oldestIdle(minAge: number): PendingExtent | undefined {
    const q = this.ageQueue;
    for (let looked = 0; looked < 4 && this.ageHead < q.length;) {
      const slot = q[this.ageHead++]!;
      const x = slot.x;
      if (x === undefined) continue;
      looked++;
      if (this.puts - x.touched >= minAge) return x;
      q.push(slot);
    }
    return undefined;
  }

  /** Registers a new extent in the age queue; drops the queue's empty slots once they dominate. */
  private made(x: PendingExtent): PendingExtent {
    x.slot.x = x;
    const q = this.ageQueue;
    q.push(x.slot);
    if (q.length - this.ageHead > 2 * this.list.length + 1024) {
      this.ageQueue = q.slice(this.ageHead).filter((slot) => slot.x !== undefined);
      this.ageHead = 0;
    }
    return x;
  }

  /** Index of the first extent with end >= at (ends are sorted because extents are disjoint). */
  private firstEndingAtOrAfter(at: number): number {
    let lo = 0;
    let hi = this.list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.list[mid]!.end < at) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/** Slab ceiling for a merger with this extent limit: room for one more page of an unaligned head. */
export function slabBytesFor(maxBytes: number): number {
  return maxBytes + PAGE_SIZE;
}
