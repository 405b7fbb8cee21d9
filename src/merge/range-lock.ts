/**
 * Ordered range lock: a holder waits for every earlier holder whose range overlaps its own,
 * except that two shared (read) holders never wait for each other. Order is registration order,
 * and registration is synchronous, so the order of driver requests on one page is the order in
 * which the merger decided to send them (rule 4). Holders only wait for earlier ones: no deadlock.
 *
 * Held ranges are few (in-flight driver requests), so a linear scan is cheaper than a tree.
 */
interface Holder {
  start: number;
  end: number;
  shared: boolean;
  released: boolean;
  waiters: Array<() => void> | null;
}

export interface RangeLease {
  /** null when nothing earlier overlaps: the holder may go on at once. */
  readonly ready: Promise<void> | null;
  release(): void;
}

export class OrderedRangeLock {
  private readonly held: Holder[] = [];

  get count(): number {
    return this.held.length;
  }

  acquire(start: number, end: number, shared: boolean): RangeLease {
    let waits: Promise<void>[] | null = null;
    for (const h of this.held) {
      if (h.start < end && start < h.end && !(shared && h.shared)) {
        (waits ??= []).push(new Promise<void>((resolve) => (h.waiters ??= []).push(resolve)));
      }
    }
    const me: Holder = { start, end, shared, released: false, waiters: null };
    this.held.push(me);
    const ready = waits === null ? null : waits.length === 1 ? waits[0]! : Promise.all(waits).then(() => undefined);
    return {
      ready,
      release: () => {
        if (me.released) return;
        me.released = true;
        const k = this.held.indexOf(me);
        if (k >= 0) this.held.splice(k, 1);
        if (me.waiters) for (const w of me.waiters) w();
      },
    };
  }
}

/** A counting semaphore bounding concurrent driver writes (FIFO, so it never starves a writer). */
export class Slots {
  private free: number;
  private readonly queue: Array<() => void> = [];

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
    const next = this.queue.shift();
    if (next) next();
    else this.free++;
  }
}
