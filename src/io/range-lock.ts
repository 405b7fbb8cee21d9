/**
 * Ordered range lock, the one way vdiskfs serialises async work: a holder waits for every earlier
 * holder whose range overlaps its own, except that two shared (read) holders never wait for each
 * other. Order is registration order, and registration is synchronous (acquire() and the start of
 * run()), so "who goes first" is decided where the call is made, never by promise timing.
 * Holders only wait for earlier ones: no deadlock within one lock. Code that holds two locks
 * takes them in one fixed order (qcow2: guest clusters, then the image's metadata lock).
 *
 * Users: the merger (guest bytes, page-aligned), qcow2 (guest clusters in flight; the metadata
 * lock as one range over everything), VMDK (grains being allocated; table write-backs), and the
 * image table (one whole-range lock per image).
 *
 * Holders are indexed by 1 MiB chunk of the range's unit, so registering costs the holders near
 * the range, not all of them: an idle flush of a big random-write backlog registers thousands of
 * extents at once. A holder wider than WIDE_CHUNKS chunks (a whole-image lock, a huge discard)
 * sits in one list every acquire looks at instead.
 */
const CHUNK = 1 << 20;
const WIDE_CHUNKS = 64;

/** The end of a range that reaches past everything: `run(0, EVERYTHING, false, fn)` is a FIFO mutex. */
export const EVERYTHING = Infinity;

interface Holder {
  start: number;
  end: number;
  shared: boolean;
  seq: number; // registration order
  stamp: number; // last acquire() that looked at it (dedupes multi-chunk holders)
  waiters: Array<() => void> | null;
}

export interface RangeLease {
  /** null when nothing earlier overlaps: the holder may go on at once. Never rejects. */
  readonly ready: Promise<void> | null;
  release(): void;
}

export class OrderedRangeLock {
  private readonly chunks = new Map<number, Holder[]>();
  private readonly wide: Holder[] = [];
  private seq = 0;
  private held = 0;

  /** Holders not yet released. */
  get count(): number {
    return this.held;
  }

  /** Would acquire(start, end, shared) have to wait? Looks only, registers nothing (the merger's synchronous reads). */
  wouldWait(start: number, end: number, shared: boolean): boolean {
    if (this.held === 0) return false;
    const conflicts = (h: Holder): boolean => h.start < end && start < h.end && !(shared && h.shared);
    for (const h of this.wide) if (conflicts(h)) return true;
    const first = Math.floor(start / CHUNK);
    const last = Math.floor(Math.max(start, end - 1) / CHUNK);
    if (last - first >= WIDE_CHUNKS) {
      for (const [c, list] of this.chunks) if (c >= first && c <= last && list.some(conflicts)) return true;
      return false;
    }
    for (let c = first; c <= last; c++) {
      const list = this.chunks.get(c);
      if (list !== undefined && list.some(conflicts)) return true;
    }
    return false;
  }

  /** Registers a holder of [start, end) now; it may go on once `ready` settles (or at once when null). */
  acquire(start: number, end: number, shared: boolean): RangeLease {
    const seq = ++this.seq;
    const first = Math.floor(start / CHUNK);
    const last = Math.floor(Math.max(start, end - 1) / CHUNK);
    const isWide = last - first >= WIDE_CHUNKS;
    const me: Holder = { start, end, shared, seq, stamp: seq, waiters: null };
    const conflicts: Holder[] = [];
    // The latest earlier exclusive holder covering all of [start, end): every conflict registered
    // before it is one it waits for too, so waiting for it covers them (one promise, not n).
    let cover = 0;
    const look = (h: Holder): void => {
      if (h.stamp === seq) return;
      h.stamp = seq;
      if (h.start < end && start < h.end && !(shared && h.shared)) {
        conflicts.push(h);
        if (!h.shared && h.start <= start && h.end >= end && h.seq > cover) cover = h.seq;
      }
    };
    for (const h of this.wide) look(h);
    if (isWide) {
      for (const [c, list] of this.chunks) if (c >= first && c <= last) for (const h of list) look(h);
      this.wide.push(me);
    } else {
      for (let c = first; c <= last; c++) {
        let list = this.chunks.get(c);
        if (list === undefined) {
          list = [];
          this.chunks.set(c, list);
        }
        for (const h of list) look(h);
        list.push(me);
      }
    }
    this.held++;
    let ready: Promise<void> | null = null;
    if (conflicts.length > 0) {
      const waits: Promise<void>[] = [];
      for (const h of conflicts) if (h.seq >= cover) waits.push(new Promise<void>((resolve) => (h.waiters ??= []).push(resolve)));
      ready = waits.length === 1 ? waits[0]! : Promise.all(waits).then(() => undefined);
    }
    // A holder released before its turn (an error path) wakes its waiters only once its turn has
    // come, so the ones that relied on it to cover earlier holders still wait for those.
    let turn = ready === null;
    if (ready !== null) void ready.then(() => (turn = true));
    let released = false;
    return {
      ready,
      release: () => {
        if (released) return;
        released = true;
        this.held--;
        this.remove(me, isWide, first, last);
        const wake = (): void => {
          if (me.waiters) for (const w of me.waiters) w();
        };
        if (turn) wake();
        else void ready!.then(wake);
      },
    };
  }

  /** acquire, wait for the turn, run `fn`, release (also when `fn` throws). Registers synchronously. */
  async run<T>(start: number, end: number, shared: boolean, fn: () => Promise<T>): Promise<T> {
    const lease = this.acquire(start, end, shared);
    try {
      if (lease.ready) await lease.ready;
      return await fn();
    } finally {
      lease.release();
    }
  }

  private remove(me: Holder, isWide: boolean, first: number, last: number): void {
    if (isWide) {
      const k = this.wide.indexOf(me);
      if (k >= 0) this.wide.splice(k, 1);
      return;
    }
    for (let c = first; c <= last; c++) {
      const list = this.chunks.get(c);
      if (list === undefined) continue;
      const k = list.indexOf(me);
      if (k >= 0) list.splice(k, 1);
      if (list.length === 0) this.chunks.delete(c);
    }
  }
}
