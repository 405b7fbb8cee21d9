/**
 * The Image of a block-table format (VHD, VDI): the one engine both use. The format answers
 * where a block lives (block-table.ts); this moves the bytes through the shared data path and
 * keeps the rules every block format shares:
 * - a write to a whole stored block goes in place, without a lock, concurrently with others;
 * - a write that needs a block stored (absent, zero, or only partly present) takes the table
 *   lock, builds the block's complete content once (its current view — the parent's bytes,
 *   zeros — with the write laid over) and hands it to the format, which writes the data;
 * - flush: the data first (a host barrier), then the table entries that point at it, then a
 *   barrier again. The table lock keeps allocations out while a flush writes the tables, so an
 *   entry is never written before the data it points at is durable.
 * - zeroes and discards: stored ranges are punched in the host file (they read as zeros and give
 *   the space back); absent ranges that would show a parent are zeroed (a zero marker where the
 *   format has one, zeros written otherwise).
 */
import { VdiskError } from '../../io/errors';
import { allEnded, InFlight, started } from '../../io/settle';
import { EVERYTHING, OrderedRangeLock } from '../../io/range-lock';
import {
  checkRange,
  DATA,
  newMapping,
  readThrough,
  readThroughSync,
  UNALLOCATED,
  ZERO,
  type FormatAccess,
  type Mapping,
} from '../data-path';
import type { Extent, Image, ImageInfo, ImageStats } from '../types';
import { BLOCK_ABSENT, BLOCK_ZERO, type BlockContent, type BlockTable } from './block-table';

/** Blocks built per allocation round: bounds the memory of a huge zero write over a parent. */
const BLOCKS_PER_ROUND = 16;

export interface BlockImageParts {
  format: string;
  path: string;
  table: BlockTable;
  parent: Image | undefined;
  readOnly: boolean;
  /** `info()` fields of the format (the engine adds nothing). */
  info: (image: BlockImage) => Promise<ImageInfo>;
  /** Closes what the format opened besides the parent (its host file). */
  close: () => Promise<void>;
}

export class BlockImage implements Image {
  readonly format: string;
  readonly path: string;
  readonly virtualSize: number;
  readonly readOnly: boolean;
  readonly backing: Image | undefined;
  readonly table: BlockTable;
  /** Allocation and table write-back, one at a time (a FIFO over everything). */
  private readonly tableLock = new OrderedRangeLock();
  private readonly counters = { blocksStored: 0, inPlaceWrites: 0, flushes: 0, punched: 0 };
  private closed = false;
  /** Requests running (close waits for them). */
  private readonly inFlight = new InFlight();

  constructor(private readonly parts: BlockImageParts) {
    this.format = parts.format;
    this.path = parts.path;
    this.table = parts.table;
    this.virtualSize = parts.table.virtualSize;
    this.readOnly = parts.readOnly;
    this.backing = parts.parent;
    // The data path's view of this image (mapSync never needs I/O: the tables are in memory).
    this.access = {
      backing: parts.parent,
      mapSync: (offset, length, out) => this.mapSync(offset, length, out),
      map: (offset, length, out) => {
        this.mapSync(offset, length, out);
        return Promise.resolve();
      },
    };
  }

  private readonly access: FormatAccess;

  /** The mapping question (data-path.ts): where the first bytes of the range live, and how far. */
  mapSync(offset: number, length: number, out: Mapping): boolean {
    const t = this.table;
    const bs = t.blockSize;
    let block = Math.floor(offset / bs);
    const inBlock = offset - block * bs;
    let n = Math.min(length, bs - inBlock);
    const e = t.entry(block);
    if (e === BLOCK_ABSENT || e === BLOCK_ZERO) {
      // Runs of the same kind answer at once (a 1 MiB read over empty blocks is one piece).
      while (n < length && t.entry(block + 1) === e) {
        block++;
        n = Math.min(length, n + bs);
      }
      out.kind = e === BLOCK_ZERO ? ZERO : UNALLOCATED;
      out.length = n;
      return true;
    }
    if (t.presence) {
      const p = t.presence(block, inBlock, n);
      if (p < 0) {
        out.kind = UNALLOCATED;
        out.length = -p;
        return true;
      }
      n = p;
    } else {
      // Blocks stored one after another on the host read as one piece.
      while (n < length && t.entry(block + 1) === e + (block + 1 - Math.floor(offset / bs)) * bs) {
        block++;
        n = Math.min(length, n + bs);
      }
    }
    out.kind = DATA;
    out.length = n;
    out.file = t.file;
    out.host = e + inBlock;
    return true;
  }

  /** True when the whole block is stored in this file (a write may go in place). */
  private whole(block: number): boolean {
    const e = this.table.entry(block);
    if (e < 0) return false;
    if (!this.table.presence) return true;
    const span = Math.min(this.table.blockSize, this.virtualSize - block * this.table.blockSize);
    return this.table.presence(block, 0, span) === span;
  }

  // --- Image ---

  async read(offset: number, into: Buffer): Promise<void> {
    checkRange(this, offset, into.length);
    await readThrough(this.access, offset, into);
  }

  readSync(offset: number, into: Buffer): boolean {
    checkRange(this, offset, into.length);
    return readThroughSync(this.access, offset, into);
  }

  write(offset: number, data: Buffer | Buffer[]): Promise<void> {
    return this.inFlight.track(this.writeNow(offset, data));
  }

  private async writeNow(offset: number, data: Buffer | Buffer[]): Promise<void> {
    const buf = Array.isArray(data) ? (data.length === 1 ? data[0]! : Buffer.concat(data)) : data;
    this.writable();
    checkRange(this, offset, buf.length);
    if (buf.length === 0) return;
    const bs = this.table.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + buf.length - 1) / bs);
    let needStore = false;
    for (let b = first; b <= last && !needStore; b++) needStore = !this.whole(b);
    if (!needStore) return this.writeInPlace(offset, buf);
    const lease = this.tableLock.acquire(0, EVERYTHING, false);
    try {
      if (lease.ready) await lease.ready;
      await this.storeAndWrite(offset, buf, first, last);
    } finally {
      lease.release();
    }
  }

  /** write() without waiting: every block whole and stored, one host range, small; false: nothing done. */
  writeSync(offset: number, data: Buffer): boolean {
    this.writable();
    checkRange(this, offset, data.length);
    if (data.length === 0) return false;
    const m = newMapping();
    this.mapSync(offset, data.length, m);
    if (m.kind !== DATA || m.length !== data.length) return false;
    const b = Math.floor(offset / this.table.blockSize);
    if (!this.whole(b) || !this.whole(Math.floor((offset + data.length - 1) / this.table.blockSize))) return false;
    if (!this.table.file.writeSync(data, m.host, 'data')) return false;
    this.counters.inPlaceWrites++;
    return true;
  }

  /** The range's blocks are all whole and stored: one host write per host-contiguous run. */
  private async writeInPlace(offset: number, buf: Buffer): Promise<void> {
    const m = newMapping();
    const writes: Promise<void>[] = [];
    try {
      for (let pos = 0; pos < buf.length; pos += m.length) {
        this.mapSync(offset + pos, buf.length - pos, m);
        if (m.kind !== DATA) throw VdiskError.io(`${this.path}: block at ${offset + pos} is not stored for an in-place write`);
        writes.push(started(this.table.file.write(buf.subarray(pos, pos + m.length), m.host, 'data')));
      }
    } finally {
      this.counters.inPlaceWrites++;
      await allEnded(writes);
    }
  }

  /**
   * Under the table lock: blocks stored meanwhile by another request take the bytes in place;
   * the others get their complete content built and stored, BLOCKS_PER_ROUND at a time.
   */
  private async storeAndWrite(offset: number, buf: Buffer, first: number, last: number): Promise<void> {
    const bs = this.table.blockSize;
    const end = offset + buf.length;
    const inPlace: Promise<void>[] = [];
    let round: BlockContent[] = [];
    const storeRound = async (): Promise<void> => {
      if (round.length === 0) return;
      await this.table.storeBlocks(round);
      this.counters.blocksStored += round.length;
      round = [];
    };
    let failure: { error: unknown } | undefined;
    try {
      for (let b = first; b <= last; b++) {
        const start = b * bs;
        const from = Math.max(offset, start);
        const to = Math.min(end, start + bs);
        const slice = buf.subarray(from - offset, to - offset);
        if (this.whole(b)) {
          inPlace.push(started(this.writeInPlace(from, slice)));
          continue;
        }
        const e = this.table.entry(b);
        const span = Math.min(bs, this.virtualSize - start);
        const covered = from === start && to === start + span;
        if (covered || e === BLOCK_ZERO || (e === BLOCK_ABSENT && !this.backing)) {
          // The rest of the block reads as zeros: the write's own bytes are the content.
          round.push({ block: b, at: from - start, data: slice });
        } else {
          // The block's current view (the parent's bytes, sectors already here) with the write over it.
          const content = Buffer.alloc(bs);
          await readThrough(this.access, start, content.subarray(0, span));
          slice.copy(content, from - start);
          round.push({ block: b, at: 0, data: content });
        }
        if (round.length >= BLOCKS_PER_ROUND) await storeRound();
      }
      await storeRound();
    } catch (e) {
      failure = { error: e };
    }
    // Also when a store or a COW read failed: the in-place writes already started end before the
    // request does (and the table lock goes), so none lands after a later write to its range, and
    // a failure of theirs is not left unhandled. A failed store or COW read is reported before theirs.
    const settled = await Promise.allSettled(inPlace);
    if (failure) throw failure.error;
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.inFlight.track(this.writeZeroesNow(offset, length));
  }

  private async writeZeroesNow(offset: number, length: number): Promise<void> {
    await this.zeroRange(offset, length);
  }

  discard(offset: number, length: number): Promise<void> {
    return this.inFlight.track(this.discardNow(offset, length));
  }

  private async discardNow(offset: number, length: number): Promise<void> {
    await this.zeroRange(offset, length);
  }

  /**
   * Stored pieces are punched (zeros, space given back; zeros written where the host cannot
   * punch); zero pieces and absent ones without a parent already read as zeros; absent pieces
   * over a parent get the format's zero marker for a whole block, zeros written otherwise.
   * Under the table lock: a block being stored must not get its old content back over a punch.
   */
  private async zeroRange(offset: number, length: number): Promise<void> {
    this.writable();
    checkRange(this, offset, length);
    if (length === 0) return;
    const lease = this.tableLock.acquire(0, EVERYTHING, false);
    try {
      if (lease.ready) await lease.ready;
      const bs = this.table.blockSize;
      const m = newMapping();
      for (let pos = 0; pos < length;) {
        const at = offset + pos;
        this.mapSync(at, Math.min(length - pos, bs - (at % bs)), m);
        const n = m.length;
        if (m.kind === DATA) {
          if (this.table.file.punchHole(m.host, n, 'discard')) this.counters.punched++;
          else await this.table.file.write(Buffer.alloc(n), m.host, 'data');
        } else if (m.kind === UNALLOCATED && this.backing) {
          const block = Math.floor(at / bs);
          const span = Math.min(bs, this.virtualSize - block * bs);
          const wholeBlock = at === block * bs && n === span && this.table.entry(block) === BLOCK_ABSENT;
          if (!(wholeBlock && this.table.markZero?.(block))) await this.storeAndWrite(at, Buffer.alloc(n), block, block);
        }
        pos += n;
      }
    } finally {
      lease.release();
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly || this.closed) return;
    const lease = this.tableLock.acquire(0, EVERYTHING, false);
    try {
      if (lease.ready) await lease.ready;
      await this.table.file.datasync('flush');
      if (this.table.dirty) {
        await this.table.writeTables();
        await this.table.file.datasync('flush');
      }
      this.counters.flushes++;
    } finally {
      lease.release();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      await this.inFlight.drained();
      await this.flush();
    } finally {
      this.closed = true;
      await this.parts.close();
      if (this.backing) await this.backing.close();
    }
  }

  async map(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length);
    const out: Extent[] = [];
    const m = newMapping();
    for (let pos = 0; pos < length; pos += m.length) {
      this.mapSync(offset + pos, length - pos, m);
      const at = offset + pos;
      if (m.kind === DATA) {
        const prev = out[out.length - 1];
        if (prev?.kind === 'data' && prev.hostOffset! + prev.length === m.host) prev.length += m.length;
        else out.push({ offset: at, length: m.length, kind: 'data', hostOffset: m.host, hostFile: this.path });
        continue;
      }
      if (m.kind === UNALLOCATED && this.backing) {
        await this.backingExtents(at, m.length, out);
        continue;
      }
      push(out, { offset: at, length: m.length, kind: m.kind === ZERO ? 'zero' : 'unallocated' });
    }
    return out;
  }

  /** What the parent holds under an absent range: 'backing' where it has data, its zeros as zeros. */
  private async backingExtents(at: number, length: number, out: Extent[]): Promise<void> {
    const b = this.backing!;
    const inside = Math.max(0, Math.min(length, b.virtualSize - at));
    if (inside > 0) {
      for (const x of await b.map(at, inside)) {
        push(out, { offset: x.offset, length: x.length, kind: x.kind === 'data' || x.kind === 'backing' ? 'backing' : x.kind });
      }
    }
    if (inside < length) push(out, { offset: at + inside, length: length - inside, kind: 'unallocated' });
  }

  backingImage(): Image | undefined {
    return this.backing;
  }

  hostFiles(): string[] {
    return [this.table.file.path];
  }

  stats(): ImageStats {
    return { io: { [this.table.file.path]: { ...this.table.file.counters } }, driver: { ...this.counters } };
  }

  info(): Promise<ImageInfo> {
    return this.parts.info(this);
  }

  private writable(): void {
    if (this.readOnly) throw VdiskError.readOnly(`${this.path} is read-only`);
    if (this.closed) throw VdiskError.io(`${this.path} is closed`);
  }
}

/** Appends an extent, merging it with the last one when they are the same kind and touch. */
function push(out: Extent[], x: Extent): void {
  const prev = out[out.length - 1];
  if (prev && prev.kind === x.kind && prev.offset + prev.length === x.offset && x.kind !== 'data') prev.length += x.length;
  else out.push(x);
}
