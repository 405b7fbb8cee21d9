/**
 * Rule 5 (DESIGN.md "The merger contract"): a deferred write that failed after it was
 * acknowledged is logged with its range, makes every later write/flush/fsync fail (sticky until
 * close), and makes reads of its range fail, since its data is lost.
 */
import createDebug from 'debug';
import { VdiskError } from '../io/errors';

const log = createDebug('vdiskfs:merge');

interface FailedRange {
  start: number;
  end: number;
  error: VdiskError;
}

/** Failed ranges remembered for reads; beyond this the oldest are dropped (the sticky error stays). */
const MAX_FAILED_RANGES = 64;

export class FailedWrites {
  private failure: FailedRange | undefined;
  private readonly ranges: FailedRange[] = [];

  constructor(
    private readonly path: string,
    private readonly warn: ((message: string) => void) | undefined,
  ) {}

  get failed(): boolean {
    return this.failure !== undefined;
  }

  /** An acknowledged driver write over [start, end) (page-aligned, `bytes` of data) failed. */
  record(start: number, end: number, bytes: number, error: VdiskError): void {
    const range: FailedRange = { start, end, error };
    const msg = `deferred write to ${this.path} bytes ${start}-${end} (${bytes} bytes) failed: ${error.message}`;
    log(msg);
    // The log must say which range was lost, also without DEBUG set.
    if (this.warn) this.warn(msg);
    else console.error(`vdiskfs: ${msg}`);
    this.failure ??= range;
    this.ranges.push(range);
    if (this.ranges.length > MAX_FAILED_RANGES) this.ranges.shift();
  }

  /** Sticky: once a deferred write failed, every later write/flush/fsync fails until the image is closed. */
  throwIfFailed(): void {
    const f = this.failure;
    if (f) {
      throw VdiskError.io(
        `an earlier deferred write to ${this.path} bytes ${f.start}-${f.end} failed: ${f.error.message}`,
        { path: this.path, start: f.start, end: f.end },
        f.error,
      );
    }
  }

  /** A read of [from, to) overlapping a lost range. */
  throwIfRangeFailed(from: number, to: number): void {
    for (const f of this.ranges) {
      if (f.start < to && from < f.end) {
        throw VdiskError.io(
          `deferred write to ${this.path} bytes ${f.start}-${f.end} failed; its data is lost: ${f.error.message}`,
          { start: f.start, end: f.end },
          f.error,
        );
      }
    }
  }
}
