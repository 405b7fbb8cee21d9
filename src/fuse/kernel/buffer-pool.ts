/**
 * Reply buffers for READ, reused: a 1 MiB read would otherwise allocate (and fault in) a fresh
 * megabyte per request. Capacities are powers of two; a buffer goes back after its reply is written.
 */
import { powerOfTwoAtLeast } from '../../io/safe-int';

const MIN_CAPACITY = 8192;
const MAX_FREE_PER_CLASS = 32;

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();

  take(size: number): Buffer {
    const cap = Math.max(MIN_CAPACITY, powerOfTwoAtLeast(size));
    return this.free.get(cap)?.pop() ?? Buffer.allocUnsafe(cap);
  }

  give(buf: Buffer): void {
    const list = this.free.get(buf.length) ?? [];
    if (list.length < MAX_FREE_PER_CLASS) list.push(buf);
    this.free.set(buf.length, list);
  }
}
