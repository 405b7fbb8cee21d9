/**
 * The page-aligned request merger (DESIGN.md "The merger contract"). One per open image, shared
 * by every FUSE handle of that image. Writes are copied into pending extents at call time and
 * acknowledged; extents go to the driver page-aligned, when they reach maxBytes, after delayMs of
 * idle, on flush/drain/close, when a read overlaps them, or past the memory cap.
 *
 * Ordering (rule 4) comes from two synchronous steps: a write lands in the pending set in the
 * order write() was called, and every driver request registers in an ordered range lock (over
 * whole pages) in the order it was decided. A request waits for earlier overlapping ones, so two
 * driver writes touching one page never run at once or out of order, and a read-modify-write of
 * a boundary page sees every earlier write to that page.
 *
 * Reads flush the pending extents they overlap and then read the driver (rule 2's wording), rather
 * than overlaying pending bytes: the driver stays the single source of truth for reads, partial
 * pages need no byte masks, and a read registered in the lock sees exactly the writes issued
 * before it. The cost (a small early write) only hits read-after-unflushed-write patterns.
 *
 * This file decides what goes to the driver and when (pending extents, idle timer, back-pressure,
 * flush/close); driver-requests.ts issues it (range lock, write slots, in-flight set).
 */
import type { Image } from '../formats/types';
import { VdiskError, fromNodeError } from '../io/errors';
import { postIdleWork, type IdleWorker } from '../io/idle-work';
import { InFlight } from '../io/settle';
import { DriverRequests, type DriverWrite } from './driver-requests';
import { FailedWrites } from './failed-writes';
import { MergerOptions, ResolvedMergerOptions, resolveMergerOptions } from './options';
import { pageDown, pageUp, PAGE_SIZE } from './pages';
import { PendingExtent, PendingExtents, slabBytesFor } from './pending-extents';

export interface WriteOptions {
  /** O_DIRECT / O_SYNC / O_DSYNC handle: the bytes reach the driver before write() returns. */
  writeThrough?: boolean;
  /** O_SYNC / O_DSYNC: also Image.flush() before returning (implies writeThrough). */
  sync?: boolean;
}

export interface MergerStats {
  /** Bytes acknowledged but not yet handed to the driver. */
  pendingBytes: number;
  pendingExtents: number;
  /** Bytes handed to the driver whose write has not finished. */
  inflightBytes: number;
  /** write() calls accepted (incoming writes). */
  mergedWrites: number;
  /** Incoming writes that joined (overlapped or abutted) an extent already pending. */
  coalescedWrites: number;
  /** Image.write calls. */
  driverWrites: number;
  /** Image.writeZeroes calls (all-zero extents, zero-range requests). */
  zeroWrites: number;
  /** Image.discard calls. */
  discards: number;
  /** Image.read calls serving read(). */
  driverReads: number;
  /** Image.read calls filling partial boundary pages before a write. */
  rmwReads: number;
  /** Image.flush calls. */
  imageFlushes: number;
  /** True once a deferred write failed (sticky: writes, flush and fsync fail with EIO until close). */
  failed: boolean;
}

export class RequestMerger {
  readonly options: ResolvedMergerOptions;
  private readonly pending: PendingExtents;
  /** Everything handed to the driver: range lock, write slots, in-flight set (driver-requests.ts). */
  private readonly driver: DriverRequests;
  private readonly counters = {
    mergedWrites: 0,
    coalescedWrites: 0,
    driverWrites: 0,
    zeroWrites: 0,
    discards: 0,
    driverReads: 0,
    rmwReads: 0,
    imageFlushes: 0,
  };
  private readonly failures: FailedWrites;
  private timer: NodeJS.Timeout | undefined;
  private writeSeq = 0;
  private armedSeq = 0;
  private closed = false;
  /** Reads in the driver: close() waits for them before it closes the image. */
  private readonly reads = new InFlight();
  /** End of the last extent sent because it reached maxBytes: where a sequential stream goes on. */
  private streamEnd = -1;
  private readonly slabBytes: number;
  /** One trickle step per idle moment: the oldest long-idle extent to the driver (see write()). */
  private readonly trickle: IdleWorker = {
    idleStep: () => {
      if (this.closed || this.pending.bytes <= this.options.trickleBytes) return false;
      const idle = this.pending.oldestIdle(this.options.trickleMinAge);
      if (idle === undefined) return false;
      this.send(idle);
      return this.pending.bytes > this.options.trickleBytes;
    },
  };

  constructor(
    readonly image: Image,
    opts: MergerOptions = {},
  ) {
    this.options = resolveMergerOptions(opts);
    this.slabBytes = slabBytesFor(this.options.maxBytes);
    this.pending = new PendingExtents(this.slabBytes);
    this.failures = new FailedWrites(image.path, this.options.warn);
    const recycle = (buf: Buffer) => this.pending.recycle(buf);
    this.driver = new DriverRequests(image, this.options.maxBytes, this.options.maxInflight, this.counters, this.failures, recycle);
  }

  get virtualSize(): number {
    return this.image.virtualSize;
  }

  /**
   * Fills `into` with the disk's bytes at `offset`, including every write acknowledged before
   * this call (rule 3). Bytes past the end of the disk are zero-filled; returns how many bytes
   * lay inside the disk. A read overlapping a range whose deferred write failed throws EIO.
   */
  read(offset: number, into: Buffer): Promise<number> {
    return this.reads.track(this.readNow(offset, into));
  }

  private async readNow(offset: number, into: Buffer): Promise<number> {
    if (!Number.isSafeInteger(offset) || offset < 0) throw VdiskError.invalid(`read at bad offset ${offset}`, { offset });
    if (this.closed) throw VdiskError.io(`read after close of ${this.image.path}`);
    const diskSize = this.image.virtualSize;
    const len = Math.max(0, Math.min(into.length, diskSize - offset));
    if (len < into.length) into.fill(0, len);
    if (len === 0) return 0;
    const end = offset + len;

    if (this.pending.size > 0) {
      for (const x of this.pending.overlapping(offset, end)) this.send(x);
    }
    await this.driver.read(offset, len, into);
    return len;
  }

  /**
   * read() answered synchronously when nothing needs waiting: no pending extent overlaps, no
   * earlier driver request holds the pages, and the driver can read at once (Image.readSync).
   * Returns the byte count as read() does, or undefined, having done nothing: then use read().
   * Ordering is read()'s: with no overlapping holder, acquire-read-release in one synchronous
   * step is what read() would have done.
   */
  readSync(offset: number, into: Buffer): number | undefined {
    const image = this.image;
    if (image.readSync === undefined || this.closed || !Number.isSafeInteger(offset) || offset < 0) return undefined;
    const len = Math.max(0, Math.min(into.length, image.virtualSize - offset));
    if (len === 0) return undefined;
    if (this.pending.size > 0 && this.pending.overlapping(offset, offset + len).length > 0) return undefined;
    if (!this.driver.readSync(offset, len, into)) return undefined;
    if (len < into.length) into.fill(0, len);
    return len;
  }

  /**
   * Writes `data` at `offset`. The bytes are copied before anything else (rule 7), so the
   * caller's buffer is free again as soon as this is called. Deferred by default; see WriteOptions.
   */
  async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    this.checkWritable(offset, data.length);
    if (data.length === 0) return;
    const through = !this.options.merge || opts?.writeThrough === true || opts?.sync === true;
    // A write continuing a stream whose last extent just went out gets a full slab at once.
    const ext = this.pending.put(offset, data, !through, offset === this.streamEnd ? this.slabBytes : 0);
    this.counters.mergedWrites++;
    if (this.pending.lastPutJoined) this.counters.coalescedWrites++;

    if (through) {
      const op = this.send(ext);
      await op.done;
      if (op.error) throw op.error;
      if (opts?.sync) await this.flushImage();
      return;
    }

    if (ext.end - ext.start >= this.options.maxBytes) this.send(ext, true);
    else if (this.pending.bytes > this.options.trickleBytes) {
      // The trickle (options.trickleBytes, 1 MiB; options.trickleMinAge, 64 writes): a backlog of
      // scattered writes goes to the driver oldest first, each extent once it was left alone
      // that long, while the request loop waits for the next request (src/io/idle-work.ts): the
      // driver work then costs a synchronous writer nothing, and the writer never stalls for a
      // 64 MiB burst at the memory cap. A stream still being written is younger and keeps
      // growing. 1 MiB (256 scattered pages) rather than more: the pending set is a sorted array,
      // and over thousands of one-page extents its splices cost more than the driver writes
      // (qcow2 psync 4 KiB random writes: 100 -> 72 µs of user CPU per request against 8 MiB).
      postIdleWork(this.trickle);
    }
    this.writeSeq++;
    if (this.timer === undefined) {
      this.armedSeq = this.writeSeq;
      this.timer = setTimeout(this.onIdleTimer, this.options.delayMs);
    }
    if (this.pending.bytes + this.driver.inflightBytes > this.options.memCapBytes) {
      // Back-pressure: the writer waits for the backlog, and learns if it failed.
      await this.drainWaiting();
    }
  }

  /**
   * write() answered synchronously, for a write-through (O_DIRECT) write that needs no waiting:
   * whole pages, no pending extent or earlier driver request overlapping them, and a driver that
   * writes them at once (Image.writeSync). True: done, durable as write() would have made it;
   * false: nothing done, use write(). `data` is not copied: it is written before this returns.
   * Ordering is write()'s: with nothing earlier overlapping, put-send-write in one synchronous
   * step is what write() would have done.
   */
  writeSync(offset: number, data: Buffer, opts?: WriteOptions): boolean {
    if (this.options.merge && opts?.writeThrough !== true) return false; // deferred writes are cheap already
    if (opts?.sync === true || this.image.writeSync === undefined || data.length === 0) return false;
    this.checkWritable(offset, data.length);
    const end = offset + data.length;
    if (this.pending.size > 0 && this.pending.overlapping(offset, end).length > 0) return false;
    if (!this.driver.writeSync(offset, end, data)) return false;
    this.counters.mergedWrites++;
    return true;
  }

  /**
   * Discard (fstrim, punch-hole): [offset, offset+length) reads as zeros afterwards and its space
   * goes back to the image. Ordered like a write (rule 4): pending bytes inside the range are
   * dropped, earlier driver writes to it finish first, later reads and writes wait for it. Whole
   * pages go to Image.discard; partial edge pages are written as zeros (rule 1). Not deferred.
   */
  discard(offset: number, length: number): Promise<void> {
    return this.clearRange(offset, length, 'discard');
  }

  /** Zero-range (fallocate ZERO_RANGE): like discard, but whole pages go to Image.writeZeroes. */
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.clearRange(offset, length, 'zero');
  }

  /** Every pending extent to the driver, then wait for all driver writes started so far. Throws EIO after a deferred failure. */
  async drain(): Promise<void> {
    await this.drainWaiting();
  }

  /** fsync / flush / release (rule 6): drain, then Image.flush(). Throws EIO after a deferred failure. */
  async flush(): Promise<void> {
    if (this.closed) return this.drainWaiting(); // close() already flushed and closed the image
    await this.drainWaiting();
    await this.flushImage();
  }

  /** Drains and closes the wrapped image (also when the drain failed: then throws EIO after closing). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    // Closed first: a write racing with close is refused (EIO) rather than left pending on a closed image.
    this.closed = true;
    this.stopTimer();
    let drainError: unknown;
    try {
      await this.drainWaiting();
    } catch (e) {
      drainError = e;
    }
    await this.reads.drained(); // a read still in the driver must not find its image closed
    await this.image.close();
    if (drainError !== undefined) throw drainError as Error;
  }

  /** Grows the disk (truncate of the raw view): drains first so no pending extent straddles the old end. */
  async resize(newSize: number): Promise<void> {
    if (!this.image.resize) throw VdiskError.unsupported(`${this.image.format} images cannot be resized`);
    await this.drainWaiting();
    await this.image.resize(newSize);
  }

  stats(): MergerStats {
    return {
      pendingBytes: this.pending.bytes,
      pendingExtents: this.pending.size,
      inflightBytes: this.driver.inflightBytes,
      ...this.counters,
      failed: this.failures.failed,
    };
  }

  private checkWritable(offset: number, length: number): void {
    if (this.closed) throw VdiskError.io(`write after close of ${this.image.path}`);
    this.failures.throwIfFailed();
    if (this.image.readOnly) throw VdiskError.readOnly(`${this.image.path} is read-only`);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.image.virtualSize) {
      throw VdiskError.invalid(`write ${offset}+${length} past the end of ${this.image.path} (${this.image.virtualSize} bytes)`, {
        offset,
        length,
      });
    }
  }

  /**
   * Hands one pending extent to the driver: out of the pending set and into the range lock, both
   * synchronously, so its place in the order is fixed now. With `keepTail`, a partial last page
   * stays pending (a sequential stream then continues it instead of read-modify-writing it twice).
   */
  private send(ext: PendingExtent, keepTail = false): DriverWrite {
    this.pending.remove(ext);
    return this.sendTaken(ext, keepTail);
  }

  private sendTaken(ext: PendingExtent, keepTail: boolean): DriverWrite {
    const diskSize = this.image.virtualSize;
    if (keepTail && ext.end % PAGE_SIZE !== 0 && ext.end !== diskSize && pageDown(ext.end) > ext.start) {
      const cut = pageDown(ext.end);
      this.pending.put(cut, ext.buf.subarray(cut - ext.start, ext.end - ext.start), ext.acked, this.slabBytes);
      ext.end = cut;
    }
    if (keepTail) this.streamEnd = ext.end;
    return this.driver.write(ext.start, ext.end, ext.buf, ext.acked, true);
  }

  private async clearRange(offset: number, length: number, how: 'discard' | 'zero'): Promise<void> {
    this.checkWritable(offset, length);
    if (length === 0) return;
    const end = offset + length;
    // Acknowledged bytes dropped here are only replaced by the clear: if it fails, the failure
    // is recorded over them (FailedWrites), as their own failed write would have been.
    const dropped: Array<[number, number]> = [];
    // Synchronously, so the order with writes issued before and after is fixed now.
    for (const x of this.pending.overlapping(offset, end)) {
      if (x.acked) dropped.push([Math.max(x.start, offset), Math.min(x.end, end)]);
      this.pending.remove(x);
      if (x.start < offset) this.pending.put(x.start, x.buf.subarray(0, offset - x.start), x.acked);
      if (x.end > end) this.pending.put(end, x.buf.subarray(end - x.start, x.end - x.start), x.acked);
    }
    const inner0 = pageUp(offset);
    const inner1 = end === this.image.virtualSize ? end : pageDown(end);
    const ops: DriverWrite[] = [];
    const acked = (a: number, b: number): boolean => dropped.some(([x0, x1]) => x0 < b && a < x1);
    if (inner0 >= inner1) {
      ops.push(this.driver.writePiece(offset, end, Buffer.alloc(length), acked(offset, end)));
    } else {
      if (offset < inner0) ops.push(this.driver.writePiece(offset, inner0, Buffer.alloc(inner0 - offset), acked(offset, inner0)));
      ops.push(this.driver.clear(inner0, inner1, how, acked(inner0, inner1)));
      if (inner1 < end) ops.push(this.driver.writePiece(inner1, end, Buffer.alloc(end - inner1), acked(inner1, end)));
    }
    await Promise.all(ops.map((o) => o.done));
    const failed = ops.find((o) => o.error !== undefined);
    if (failed) throw failed.error as Error;
  }

  private sendAllPending(): void {
    if (this.pending.size === 0) return;
    for (const x of this.pending.takeAll()) this.sendTaken(x, false);
  }

  private async drainWaiting(): Promise<void> {
    this.sendAllPending();
    const settled = this.driver.settled();
    if (settled) await settled;
    this.failures.throwIfFailed();
  }

  private async flushImage(): Promise<void> {
    this.counters.imageFlushes++;
    try {
      await this.image.flush();
    } catch (e) {
      throw fromNodeError(e, `flush ${this.image.path}`);
    }
  }

  private readonly onIdleTimer = (): void => {
    if (this.writeSeq !== this.armedSeq && !this.closed) {
      // Writes came in since arming: not idle yet; wait another delay (refresh() reuses the timer).
      this.armedSeq = this.writeSeq;
      this.timer?.refresh();
      return;
    }
    this.timer = undefined;
    this.sendAllPending();
  };

  private stopTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
