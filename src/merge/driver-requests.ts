/**
 * The merger's driver side (split out of request-merger.ts, which keeps the pending extents, the
 * idle timer and the public API): every request the merger hands to the Image, each registered
 * in the ordered range lock over whole pages in the order it was decided (rule 4), at most
 * maxInflight driver writes at once. Owns the range lock, the write slots and the in-flight set;
 * reads take the same lock, so a read sees exactly the driver writes issued before it.
 */
import { isAllZero } from '../formats/all-zero';
import type { Image } from '../formats/types';
import { VdiskError, fromNodeError } from '../io/errors';
import { SYNC_IO_MAX } from '../io/host-file';
import { OrderedRangeLock } from '../io/range-lock';
import { type WriteCounters, writeExtentAligned } from './extent-writer';
import type { FailedWrites } from './failed-writes';
import { pageDown, pageSpan, PAGE_SIZE } from './pages';
import { Slots } from './slots';

export interface DriverWrite {
  start: number; // page-aligned range the driver request covers
  end: number;
  bytes: number;
  acked: boolean;
  error: VdiskError | undefined;
  done: Promise<void>; // settles when the driver write finished; never rejects
}

/** The `done` of a driver write that finished before it was returned (writeAtOnce). */
const SETTLED: Promise<void> = Promise.resolve();

export interface DriverCounters extends WriteCounters {
  discards: number;
  driverReads: number;
}

export class DriverRequests {
  private readonly lock = new OrderedRangeLock();
  private readonly slots: Slots;
  private readonly inflight = new Set<DriverWrite>();
  /** Bytes handed to the driver whose write has not finished. */
  inflightBytes = 0;

  constructor(
    private readonly image: Image,
    private readonly maxBytes: number,
    maxInflight: number,
    private readonly counters: DriverCounters,
    private readonly failures: FailedWrites,
    /** A slab handed over with `recycle` is free again: back to the pending set's pool. */
    private readonly recycle: (buf: Buffer) => void,
  ) {
    this.slots = new Slots(maxInflight);
  }

  /**
   * Reads [offset, offset+len) of the disk into `into` in the range lock (after every earlier
   * overlapping driver request); partial edge pages go through a bounce buffer. `into` is
   * already zero-filled past `len`.
   */
  async read(offset: number, len: number, into: Buffer): Promise<void> {
    const end = offset + len;
    const span = pageSpan(offset, end, this.image.virtualSize);
    const lease = this.lock.acquire(span.start, span.end, true);
    try {
      if (lease.ready) await lease.ready;
      this.failures.throwIfRangeFailed(offset, end);
      this.counters.driverReads++;
      if (span.start === offset && span.end === end) {
        await this.image.read(offset, len === into.length ? into : into.subarray(0, len));
      } else {
        const bounce = Buffer.allocUnsafe(span.end - span.start);
        await this.image.read(span.start, bounce);
        bounce.copy(into, 0, offset - span.start, end - span.start);
      }
    } catch (e) {
      throw fromNodeError(e, `read ${this.image.path} at ${offset}+${len}`);
    } finally {
      lease.release();
    }
  }

  /**
   * read() in one synchronous step, when no earlier driver request holds the pages and the
   * driver can read at once (Image.readSync). False: nothing done, though `into` may hold part
   * of the bytes (a large read found not all cached); read() fills it again.
   */
  readSync(offset: number, len: number, into: Buffer): boolean {
    const image = this.image;
    if (image.readSync === undefined) return false;
    const end = offset + len;
    const span = pageSpan(offset, end, image.virtualSize);
    if (this.lock.wouldWait(span.start, span.end, true)) return false;
    this.failures.throwIfRangeFailed(offset, end);
    const aligned = span.start === offset && span.end === end;
    const target = aligned ? (len === into.length ? into : into.subarray(0, len)) : Buffer.allocUnsafe(span.end - span.start);
    let done: boolean;
    try {
      done = image.readSync(span.start, target);
    } catch (e) {
      throw fromNodeError(e, `read ${image.path} at ${offset}+${len}`);
    }
    if (!done) return false;
    this.counters.driverReads++;
    if (!aligned) target.copy(into, 0, offset - span.start, end - span.start);
    return true;
  }

  /**
   * A write-through write of whole pages in one synchronous step, when no earlier driver request
   * holds the pages and the driver can write at once (Image.writeSync). False: nothing done, and
   * the caller takes the ordinary path: partial pages (read-modify-write), all-zero data
   * (Image.writeZeroes), pages held, or a driver that must wait. `buf` is used only during the call.
   */
  writeSync(start: number, end: number, buf: Buffer): boolean {
    const image = this.image;
    if (image.writeSync === undefined) return false;
    if (start % PAGE_SIZE !== 0 || (end % PAGE_SIZE !== 0 && end !== image.virtualSize)) return false;
    if (this.lock.wouldWait(start, end, false) || isAllZero(buf)) return false;
    let done: boolean;
    try {
      done = image.writeSync(start, buf);
    } catch (e) {
      throw fromNodeError(e, `write ${image.path} at ${start}+${end - start}`);
    }
    if (done) this.counters.driverWrites++;
    return done;
  }

  /**
   * Writes bytes [start, end), held in `buf` from its start. Driver requests stay near maxBytes
   * (overlapping merges or a huge write can make an extent bigger): cut at page boundaries, so
   * the pieces lock disjoint pages and run in parallel. `recycle`: buf is an extent's own slab.
   */
  write(start: number, end: number, buf: Buffer, acked: boolean, recycle: boolean): DriverWrite {
    const limit = Math.max(PAGE_SIZE, pageDown(this.maxBytes));
    // One piece: its slab goes back to the pending set once the driver is done with it.
    if (end - start <= limit) return this.writePiece(start, end, buf, acked, recycle);
    const parts: DriverWrite[] = [];
    for (let at = start; at < end;) {
      const cut = Math.min(end, pageDown(at + limit)); // limit >= one page, so cut > at
      parts.push(this.writePiece(at, cut, buf.subarray(at - start), acked));
      at = cut;
    }
    const whole: DriverWrite = { start, end, bytes: end - start, acked, error: undefined, done: Promise.resolve() };
    whole.done = Promise.all(parts.map((p) => p.done)).then(() => {
      whole.error = parts.find((p) => p.error !== undefined)?.error;
    });
    return whole;
  }

  /** One driver write of bytes [start, end), which sit at buf[0 .. end-start). `recycle`: buf is the extent's own slab, free once written. */
  writePiece(start: number, end: number, buf: Buffer, acked: boolean, recycle = false): DriverWrite {
    const bytes = end - start;
    const atOnce = this.writeAtOnce(start, end, buf.subarray(0, bytes), acked);
    if (atOnce !== undefined) {
      if (recycle) this.recycle(buf);
      return atOnce;
    }
    const span = pageSpan(start, end, this.image.virtualSize);
    const lease = this.lock.acquire(span.start, span.end, false);
    const op: DriverWrite = { start, end, bytes, acked, error: undefined, done: Promise.resolve() };
    this.inflight.add(op);
    this.inflightBytes += bytes;
    op.done = (async () => {
      let slot = false;
      try {
        if (lease.ready) await lease.ready;
        const wait = this.slots.acquire();
        slot = true;
        if (wait) await wait;
        await writeExtentAligned(this.image, start, end, buf.subarray(0, bytes), this.counters);
      } catch (e) {
        op.error = fromNodeError(e, `write ${this.image.path} at ${start}+${bytes}`);
        this.recordFailure(op, op.error);
      } finally {
        if (slot) this.slots.release();
        lease.release();
        this.inflight.delete(op);
        this.inflightBytes -= bytes;
        if (recycle) this.recycle(buf);
      }
    })();
    return op;
  }

  /**
   * A piece of whole pages written in one synchronous step (writeSync) when nothing needs
   * waiting: the common case of a deferred 4 KiB write the trickle sends to a page the driver
   * writes in place. It skips the lock, the slot and the async chain of writePiece, which were
   * most of the garbage of such a write (a promise and a frame per async function: ~3.4 of the
   * 6.5 KB per 4 KiB psync write on the raw view). Ordering is writePiece's: no earlier request
   * holds the pages, and acquire-write-release in one step is what it would have done. A write
   * that throws is recorded like an async one that failed. Undefined: nothing done.
   */
  private writeAtOnce(start: number, end: number, body: Buffer, acked: boolean): DriverWrite | undefined {
    // Larger pieces are never written synchronously (Image.writeSync); skip the zero scan.
    if (end - start > SYNC_IO_MAX || this.image.writeSync === undefined) return undefined;
    let error: VdiskError | undefined;
    try {
      if (!this.writeSync(start, end, body)) return undefined;
    } catch (e) {
      error = fromNodeError(e, `write ${this.image.path} at ${start}+${end - start}`);
    }
    const op: DriverWrite = { start, end, bytes: end - start, acked, error, done: SETTLED };
    if (error !== undefined) this.recordFailure(op, error);
    return op;
  }

  /**
   * One page-aligned Image.discard / Image.writeZeroes, in the range lock like a write. `acked`:
   * it replaces acknowledged bytes never sent, so its failure is recorded as theirs would be.
   */
  clear(start: number, end: number, how: 'discard' | 'zero', acked = false): DriverWrite {
    const lease = this.lock.acquire(start, end, false);
    const op: DriverWrite = { start, end, bytes: 0, acked, error: undefined, done: Promise.resolve() };
    this.inflight.add(op);
    op.done = (async () => {
      try {
        if (lease.ready) await lease.ready;
        if (how === 'discard') {
          this.counters.discards++;
          await this.image.discard(start, end - start);
        } else {
          this.counters.zeroWrites++;
          await this.image.writeZeroes(start, end - start);
        }
      } catch (e) {
        op.error = fromNodeError(e, `${how} ${this.image.path} at ${start}+${end - start}`);
        this.recordFailure(op, op.error);
      } finally {
        lease.release();
        this.inflight.delete(op);
      }
    })();
    return op;
  }

  /** Settles when every driver request started so far has (never rejects); undefined when none is in flight. */
  settled(): Promise<void> | undefined {
    if (this.inflight.size === 0) return undefined;
    const ops = [...this.inflight];
    return Promise.all(ops.map((o) => o.done)).then(() => undefined);
  }

  private recordFailure(op: DriverWrite, error: VdiskError): void {
    if (!op.acked) return; // nobody was told "done": the waiting write-through caller gets the error itself
    this.failures.record(op.start, op.end, op.bytes, error);
  }
}
