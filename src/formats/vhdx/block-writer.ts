/**
 * Writes, zeroes and discards by payload block. A FULLY_PRESENT block is written in place. Any
 * other block is allocated under its block lock (two requests never allocate one block twice):
 * new space at the end of the file, 1 MiB aligned (never reused in a session, so a late write to
 * a block that was zeroed meanwhile lands in abandoned space), the file grown first so the space
 * reads as zeros, then the data (for a differencing disk the whole block: the parent's bytes
 * under the new ones), and only then the BAT entry, in memory; the entry reaches the file through
 * the log at the next commit (metadata-log.ts), after a flush of the data.
 */
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { OrderedRangeLock } from '../../io/range-lock';
import { allEnded } from '../../io/settle';
import { readBacking } from '../data-path';
import type { Image } from '../types';
import * as bat from './bat';
import type { BatTable } from './bat-table';
import { SectorBitmaps } from './sector-bitmaps';

export interface BlockOwner {
  readonly path: string;
  readonly virtualSize: number;
  readonly f: HostFile;
  readonly table: BatTable;
  readonly parent: Image | undefined;
  readonly hasParent: boolean;
  /** A fixed disk: blocks stay allocated (zeroes are written, not block states). */
  readonly leaveAllocated: boolean;
  /** This image's view of [guest, guest+into.length) (the COW source of a PARTIALLY_PRESENT block). */
  readOwn(guest: number, into: Buffer): Promise<void>;
}

export class BlockWriter {
  private readonly lock = new OrderedRangeLock();
  private extending: Promise<void> = Promise.resolve();
  private allocEnd: number;
  /** The file's size as grown by allocations (what a log entry's LastFileOffset says). */
  fileSize: number;
  allocations = 0;
  private readonly freed: number[] = [];
  /** Differencing disks: the sector bitmaps kept in step with FULLY_PRESENT blocks. */
  readonly bitmaps: SectorBitmaps | undefined;

  constructor(
    private readonly o: BlockOwner,
    fileSize: number,
  ) {
    this.fileSize = fileSize;
    let end = fileSize;
    const g = o.table.g;
    for (let b = 0; b < g.payloadBlocks; b++) {
      const s = o.table.state(b);
      if (s === bat.FULLY_PRESENT || s === bat.PARTIALLY_PRESENT) end = Math.max(end, o.table.host(b) + g.blockSize);
    }
    for (let c = 0; c * g.chunkRatio < g.payloadBlocks; c++) {
      const h = o.table.bitmapHost(c);
      if (h !== undefined) end = Math.max(end, h + bat.MiB);
    }
    this.allocEnd = Math.ceil(end / bat.MiB) * bat.MiB;
    this.bitmaps = o.hasParent ? new SectorBitmaps(o.f, o.table, () => this.reserve(bat.MiB)) : undefined;
  }

  /** `bytes` (whole MiB) at the end of the file, the file grown over them (so they read as zeros). */
  private async reserve(bytes: number): Promise<number> {
    const host = this.allocEnd;
    this.allocEnd += bytes;
    await this.extendTo(host + bytes);
    return host;
  }

  private get bs(): number {
    return this.o.table.g.blockSize;
  }

  /** Pieces of [offset, offset+length) per payload block. */
  private pieces(offset: number, length: number): Array<{ block: number; inBlock: number; pos: number; n: number }> {
    const out = [];
    for (let pos = 0; pos < length;) {
      const at = offset + pos;
      const block = Math.floor(at / this.bs);
      const inBlock = at - block * this.bs;
      const n = Math.min(length - pos, this.bs - inBlock);
      out.push({ block, inBlock, pos, n });
      pos += n;
    }
    return out;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    // Every block's write ends before the request does, also when one fails (settle.ts).
    await allEnded(this.pieces(offset, data.length).map((p) => this.writePiece(p.block, p.inBlock, data.subarray(p.pos, p.pos + p.n))));
  }

  /** The in-place part of write() done synchronously: one FULLY_PRESENT block, small; false: nothing done. */
  writeSync(offset: number, data: Buffer): boolean {
    const block = Math.floor(offset / this.bs);
    const inBlock = offset - block * this.bs;
    if (inBlock + data.length > this.bs || !this.inPlace(block)) return false;
    if (!this.o.f.writeSync(data, this.o.table.host(block) + inBlock, 'data')) return false;
    return true;
  }

  private async writePiece(block: number, inBlock: number, data: Buffer): Promise<void> {
    if (this.inPlace(block)) return this.writeInPlace(block, inBlock, data);
    const lease = this.lock.acquire(block, block + 1, false);
    try {
      if (lease.ready) await lease.ready;
      if (this.inPlace(block)) return await this.writeInPlace(block, inBlock, data);
      await this.allocate(block, inBlock, data);
    } finally {
      lease.release();
    }
  }

  /** Written where it is: FULLY_PRESENT (or PARTIALLY_PRESENT without a parent, which reads as present). */
  private inPlace(block: number): boolean {
    const s = this.o.table.state(block);
    return s === bat.FULLY_PRESENT || (s === bat.PARTIALLY_PRESENT && !this.o.hasParent);
  }

  private async writeInPlace(block: number, inBlock: number, data: Buffer): Promise<void> {
    await this.o.f.write(data, this.o.table.host(block) + inBlock, 'data');
  }

  private async allocate(block: number, inBlock: number, data: Buffer): Promise<void> {
    const t = this.o.table;
    const s = t.state(block);
    const start = block * this.bs;
    if (s === bat.PARTIALLY_PRESENT && this.o.hasParent) {
      // The block's own place already holds the sectors its bitmap marks; the others take the
      // parent's bytes there (invisible until the entry says FULLY_PRESENT).
      const whole = Buffer.alloc(this.bs);
      await this.o.readOwn(start, whole.subarray(0, Math.min(this.bs, this.o.virtualSize - start)));
      data.copy(whole, inBlock);
      await this.o.f.write(whole, t.host(block), 'data');
      await this.bitmaps!.markBlock(block);
      t.set(block, bat.FULLY_PRESENT, t.host(block));
      return;
    }
    const host = await this.reserve(this.bs);
    if (this.o.hasParent && s === bat.NOT_PRESENT) {
      const whole = Buffer.alloc(this.bs);
      await readBacking(this.o.parent, start, whole.subarray(0, Math.max(0, Math.min(this.bs, this.o.virtualSize - start))));
      data.copy(whole, inBlock);
      await this.o.f.write(whole, host, 'data');
    } else {
      // Fresh space past the old end of the file reads as zeros: only the new bytes are written.
      await this.o.f.write(data, host + inBlock, 'data');
    }
    await this.bitmaps?.markBlock(block);
    t.set(block, bat.FULLY_PRESENT, host);
    this.allocations++;
  }

  /** Grows the file to at least `end` (growths are chained, so a smaller one never shrinks a larger). */
  private extendTo(end: number): Promise<void> {
    const run = this.extending.then(async () => {
      if (this.fileSize >= end) return;
      await this.o.f.truncate(end);
      this.fileSize = end;
    });
    this.extending = run.catch(() => {});
    return run;
  }

  /** True when the block reads as zeros whatever the parent holds. */
  private readsZero(block: number): boolean {
    const s = this.o.table.state(block);
    if (s === bat.ZERO || s === bat.UNMAPPED || s === bat.UNDEFINED) return true;
    return s === bat.NOT_PRESENT && !this.o.hasParent;
  }

  /**
   * Whole blocks take the ZERO state (UNMAPPED for a discard without a parent: NOT_PRESENT would
   * show a parent's bytes); their old space is punched once the change is committed (takeFreed).
   * A fixed disk (LeaveBlockAllocated) keeps its blocks: zeros in place. Partial blocks: zeros in
   * place where the block is present, nothing where it already reads as zeros, else an allocation.
   */
  async zero(offset: number, length: number, discard: boolean): Promise<void> {
    await allEnded(
      this.pieces(offset, length).map(async (p) => {
        const start = p.block * this.bs;
        const whole = p.inBlock === 0 && (p.n === this.bs || start + p.n >= this.o.virtualSize);
        if (this.inPlace(p.block) && (!whole || this.o.leaveAllocated)) return this.zeroInPlace(p.block, p.inBlock, p.n);
        if (!whole) {
          if (this.readsZero(p.block)) return;
          await this.writePiece(p.block, p.inBlock, Buffer.alloc(p.n));
          return;
        }
        const lease = this.lock.acquire(p.block, p.block + 1, false);
        try {
          if (lease.ready) await lease.ready;
          if (this.inPlace(p.block) && this.o.leaveAllocated) return await this.zeroInPlace(p.block, p.inBlock, p.n);
          const state = discard && !this.o.hasParent ? bat.UNMAPPED : bat.ZERO;
          if (this.readsZero(p.block) && (this.o.table.state(p.block) === state || !this.o.hasParent)) return;
          if (this.o.table.state(p.block) === bat.FULLY_PRESENT) this.freed.push(this.o.table.host(p.block));
          this.o.table.set(p.block, state, 0);
        } finally {
          lease.release();
        }
      }),
    );
  }

  /** Zeros over a present block's bytes: a punched hole where the host can, else written zeros. */
  private async zeroInPlace(block: number, inBlock: number, n: number): Promise<void> {
    const host = this.o.table.host(block) + inBlock;
    if (this.o.f.punchHole(host, n, 'data')) return;
    const zeros = Buffer.alloc(Math.min(n, bat.MiB));
    for (let done = 0; done < n; done += zeros.length)
      await this.o.f.write(zeros.subarray(0, Math.min(zeros.length, n - done)), host + done, 'data');
  }

  /** Host offsets of whole blocks zeroed since the last call (punch them once the BAT change is durable). */
  takeFreed(): number[] {
    return this.freed.splice(0);
  }

  /** Puts back what takeFreed() gave when the commit failed: the next one frees them. */
  returnFreed(hosts: number[]): void {
    this.freed.unshift(...hosts);
  }
}

export function refuseReadOnly(path: string): never {
  throw VdiskError.readOnly(`${path} is read-only`);
}
