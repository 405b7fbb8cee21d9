/**
 * An in-memory Image for merger tests: a Buffer is the disk. It records every request, checks
 * the merger contract as requests arrive (4 KiB alignment except a tail ending at virtualSize;
 * no two overlapping requests in flight when one of them writes), and can delay or fail requests.
 * Violations are collected (not thrown) so a test sees them all and the merger is not misled.
 */
import type { Extent, Image, ImageInfo, ImageStats } from '../../src/formats/types';
import { VdiskError } from '../../src/io/errors';

export type RequestKind = 'read' | 'write' | 'zero' | 'discard' | 'flush' | 'close';

export interface Request {
  kind: RequestKind;
  offset: number;
  length: number;
  seq: number; // arrival order
}

export interface ModelImageOptions {
  /** Delay (ms) before a request completes; 0 = next macrotask. Called per request. */
  delay?: (req: Request) => number;
  /** Return an error to make this request fail (after its delay, before touching data). */
  fail?: (req: Request) => Error | undefined;
  readOnly?: boolean;
  /**
   * Gives the image a writeSync (Image's synchronous fast path): a write it accepts (true from
   * this predicate) is checked and applied at once (or throws what `fail` returns); the others
   * are declined (false, nothing done).
   */
  syncWrites?: (offset: number, length: number) => boolean;
}

const PAGE = 4096;

export class ModelImage implements Image {
  readonly format = 'model';
  readonly path = '/model.img';
  readonly data: Buffer;
  readonly requests: Request[] = [];
  readonly violations: string[] = [];
  private readonly active = new Set<Request>();
  private seq = 0;
  closed = false;
  /** Writes done by writeSync. */
  syncWriteCount = 0;
  writeSync?: (offset: number, data: Buffer) => boolean;

  constructor(
    public virtualSize: number,
    private readonly opts: ModelImageOptions = {},
  ) {
    this.data = Buffer.alloc(virtualSize);
    const accepts = opts.syncWrites;
    if (accepts) {
      this.writeSync = (offset, data) => {
        if (!accepts(offset, data.length)) return false;
        const req = this.begin('write', offset, data.length); // the contract's checks, as for write()
        this.active.delete(req);
        const err = this.opts.fail?.(req);
        if (err) throw err; // a synchronous write fails by throwing, nothing written
        data.copy(this.data, offset);
        this.syncWriteCount++;
        return true;
      };
    }
  }

  get readOnly(): boolean {
    return this.opts.readOnly ?? false;
  }

  /** Requests of the given kinds, in arrival order. */
  log(...kinds: RequestKind[]): Request[] {
    return this.requests.filter((r) => kinds.includes(r.kind));
  }

  async read(offset: number, into: Buffer): Promise<void> {
    const req = this.begin('read', offset, into.length);
    try {
      await this.wait(req);
      this.data.copy(into, 0, offset, offset + into.length);
    } finally {
      this.active.delete(req);
    }
  }

  async write(offset: number, data: Buffer | Buffer[]): Promise<void> {
    const bufs = Array.isArray(data) ? data : [data];
    const len = bufs.reduce((n, b) => n + b.length, 0);
    const req = this.begin('write', offset, len);
    try {
      await this.wait(req);
      let at = offset;
      for (const b of bufs) {
        b.copy(this.data, at);
        at += b.length;
      }
    } finally {
      this.active.delete(req);
    }
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    const req = this.begin('zero', offset, length);
    try {
      await this.wait(req);
      this.data.fill(0, offset, offset + length);
    } finally {
      this.active.delete(req);
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    const req = this.begin('discard', offset, length);
    try {
      await this.wait(req);
      this.data.fill(0, offset, offset + length);
    } finally {
      this.active.delete(req);
    }
  }

  async flush(): Promise<void> {
    const req = this.begin('flush', 0, 0);
    try {
      await this.wait(req);
    } finally {
      this.active.delete(req);
    }
  }

  async close(): Promise<void> {
    this.requests.push({ kind: 'close', offset: 0, length: 0, seq: this.seq++ });
    this.closed = true;
  }

  async map(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, kind: 'data' }];
  }

  hostFiles(): string[] {
    return [];
  }

  stats(): ImageStats {
    return { io: {}, driver: {} };
  }

  async info(): Promise<ImageInfo> {
    return { filename: this.path, format: this.format, 'virtual-size': this.virtualSize };
  }

  private begin(kind: RequestKind, offset: number, length: number): Request {
    const req: Request = { kind, offset, length, seq: this.seq++ };
    this.requests.push(req);
    if (this.closed) this.violations.push(`${kind} after close`);
    if (kind !== 'flush') {
      const end = offset + length;
      if (offset < 0 || end > this.virtualSize) throw new VdiskError('EINVAL', `${kind} ${offset}+${length} past the end`);
      if (offset % PAGE !== 0 || (length % PAGE !== 0 && end !== this.virtualSize)) {
        this.violations.push(`unaligned ${kind} ${offset}+${length} (disk ${this.virtualSize})`);
      }
      if (length === 0) this.violations.push(`empty ${kind} at ${offset}`);
      for (const a of this.active) {
        if (a.kind === 'flush' || (a.kind === 'read' && kind === 'read')) continue;
        if (a.offset < end && offset < a.offset + a.length) {
          this.violations.push(`${kind} ${offset}+${length} overlaps in-flight ${a.kind} ${a.offset}+${a.length}`);
        }
      }
    }
    this.active.add(req);
    return req;
  }

  private async wait(req: Request): Promise<void> {
    const ms = this.opts.delay?.(req) ?? 0;
    await new Promise<void>((resolve) => (ms > 0 ? setTimeout(resolve, ms) : setImmediate(resolve)));
    const err = this.opts.fail?.(req);
    if (err) throw err;
  }
}
