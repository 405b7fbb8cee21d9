/**
 * Ordered range lock: a holder waits for every earlier holder whose range overlaps its own,
 * except that two shared (read) holders never wait for each other. Order is registration order,
 * and registration is synchronous, so the order of driver requests on one page is the order in
 * which the merger decided to send them (rule 4). Holders only wait for earlier ones: no deadlock.
 *
 * Holders are indexed by 1 MiB chunk, so registering costs the holders near the range, not all of
 * them: an idle flush of a big random-write backlog registers thousands of extents at once.
 */
const CHUNK = 1 << 20;

interface Holder {
  start: number;
  end: number;
  shared: boolean;
  released: boolean;
  stamp: number;                       // last acquire() that looked at it (dedupes multi-chunk holders)
  waiters: Array<() => void> | null;
}

export interface RangeLease {
  /** null when nothing earlier overlaps: the holder may go on at once. */
  readonly ready: Promise<void> | null;
  release(): void;
}

export class OrderedRangeLock {
  private readonly chunks = new Map<number, Holder[]>();
  private stamp = 0;
  private held = 0;

  /** Holders not yet released. */
  get count(): number {
    return this.held;
  }

  acquire(start: number, end: number, shared: boolean): RangeLease {
    const stamp = ++this.stamp;
    const first = Math.floor(start / CHUNK);
    const last = Math.floor(Math.max(start, end - 1) / CHUNK);
    let waits: Promise<void>[] | null = null;
    const me: Holder = { start, end, shared, released: false, stamp, waiters: null };
    for (let c = first; c <= last; c++) {
      let list = this.chunks.get(c);
      if (list === undefined) {
        list = [];
        this.chunks.set(c, list);
      }
      for (const h of list) {
        if (h.stamp === stamp) continue;
        h.stamp = stamp;
        if (h.start < end && start < h.end && !(shared && h.shared)) {
          (waits ??= []).push(new Promise<void>((resolve) => (h.waiters ??= []).push(resolve)));
        }
      }
      list.push(me);
    }
    this.held++;
    const ready = waits === null ? null : waits.length === 1 ? waits[0]! : Promise.all(waits).then(() => undefined);
    return {
      ready,
      release: () => {
        if (me.released) return;
        me.released = true;
        this.held--;
        for (let c = first; c <= last; c++) {
          const list = this.chunks.get(c);
          if (list === undefined) continue;
          const k = list.indexOf(me);
          if (k >= 0) list.splice(k, 1);
          if (list.length === 0) this.chunks.delete(c);
        }
        if (me.waiters) for (const w of me.waiters) w();
      },
    };
  }
}

/** A counting semaphore bounding concurrent driver writes (FIFO, so it never starves a writer). */
export class Slots {
  private free: number;
  private queue: Array<() => void> = [];
  private head = 0;

  constructor(n: number) {
    this.free = n;
  }

  acquire(): Promise<void> | null {
    if (this.free > 0) {
      this.free--;
      return null;
    }
    return new Promise<void>((resolve) => this.queue.push(resolve));
  }

  release(): void {
    if (this.head < this.queue.length) {
      const next = this.queue[this.head]!;
      this.head++;
      if (this.head > 1024 && this.head * 2 > this.queue.length) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      next();
    } else {
      this.free++;
    }
  }
}
