/**
 * Guest clusters a write has planned but not yet committed ("in flight"): a request touching
 * one of them waits until that write ends, so no cluster is allocated twice and a discard does
 * not change L2 entries between a write's plan and its commit. Checked and changed under the
 * image lock only.
 */
import type { Mutex } from './mutex';

export interface Flight {
  first: number;
  last: number;
  done: Promise<void>;
  finish: () => void;
}

export class ClusterFlights {
  private flights: Flight[] = [];

  constructor(private readonly mutex: Mutex) {}

  /** A flight for clusters [first, last], not yet started. */
  entry(first: number, last: number): Flight {
    let finish!: () => void;
    const done = new Promise<void>((r) => (finish = r));
    return { first, last, done, finish };
  }

  /** The end of a flight overlapping [first, last], if one is in the air. */
  busy(first: number, last: number): Promise<void> | undefined {
    return this.flights.find((f) => f.first <= last && f.last >= first)?.done;
  }

  start(f: Flight): void {
    this.flights.push(f);
  }

  end(f: Flight): void {
    this.flights = this.flights.filter((x) => x !== f);
    f.finish();
  }

  /** Runs `fn` under the image lock once no flight overlaps [first, last]. */
  async exclusive<T>(first: number, last: number, fn: () => Promise<T>): Promise<T> {
    for (;;) {
      let busy: Promise<void> | undefined;
      const out = await this.mutex.run(async () => {
        busy = this.busy(first, last);
        return busy ? undefined : fn();
      });
      if (!busy) return out as T;
      await busy;
    }
  }
}
