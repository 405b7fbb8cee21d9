/**
 * Host I/O that a request starts before it waits for something else. Two rules every driver
 * keeps (the power-cut storms with failing host writes check them, test/helpers/crash-states.ts):
 *  - a write already started is observed at once (`started`), so its failure is not an unhandled
 *    rejection (which ends the daemon) while the request awaits a COW read or a store first;
 *  - a request ends only once every write it started has ended (`allEnded`), also when one
 *    fails: a write still running could land after a later write of the same range.
 */
function ignore(): void {}

/** `p`, its failure left for whoever awaits it later (allEnded); no unhandled rejection meanwhile. */
export function started<T>(p: Promise<T>): Promise<T> {
  p.catch(ignore);
  return p;
}

/** Waits for every promise, also when one fails, then throws the first failure in array order. */
export async function allEnded(ps: readonly Promise<unknown>[]): Promise<void> {
  const settled = await Promise.allSettled(ps);
  for (const r of settled) if (r.status === 'rejected') throw r.reason;
}

/**
 * The requests running on an image, so that close() waits for them: a write still running when
 * close flushes would set its table entries after that flush (a lost write) or reach a closed
 * file. (Through FUSE the merger drains first; the Image API alone can close mid-request.)
 */
export class InFlight {
  private running = 0;
  private wake: (() => void) | undefined;
  private readonly ended = (): void => {
    if (--this.running === 0 && this.wake) {
      this.wake();
      this.wake = undefined;
    }
  };

  /** `p`, counted until it ends (its failure stays for the caller to handle). */
  track<T>(p: Promise<T>): Promise<T> {
    this.running++;
    p.then(this.ended, this.ended);
    return p;
  }

  /** Resolves once nothing tracked is running. */
  drained(): Promise<void> {
    if (this.running === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const before = this.wake;
      this.wake = () => {
        before?.();
        resolve();
      };
    });
  }
}
