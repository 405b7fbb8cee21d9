/**
 * How long the request loop busy-polls /dev/fuse after the queue runs empty, before it sleeps.
 *
 * Why poll at all: a synchronous client (psync, a loop device, dd) sends its next request a few
 * tens of µs after our reply. If the loop sleeps in poll(2) meanwhile, the kernel has to wake it
 * (on a VM: an inter-processor interrupt to a halted vCPU), which measured at about two thirds of
 * a 4 KiB write's round trip here (115 µs per request sleeping, 37 µs polling: `make bench`).
 * QEMU's IOThreads do the same for the same reason (`poll-max-ns`); this adapts the window much
 * as they do, but keeps polling through a busy client's occasional hiccup:
 *
 * - the next request came within the window: right size, keep it;
 * - it came later, but within the maximum: grow the window (double it) so polling catches it;
 * - it came later than the maximum: a point against polling; one that came in time takes a point
 *   back. From FAR_POINTS on the client is slow-paced or idle and polling only burns CPU: each
 *   further late request halves the window (to 0 below the smallest step). So a busy client's occasional hiccup (a GC pause, a
 *   thread-pool write on the other core) changes nothing (shrinking on each one cost a third of
 *   the 4 KiB write speed here), while a client that is mostly late closes the window quickly.
 * - the window is 0: every PROBE_EVERY-th empty queue polls for the maximum once anyway, since a
 *   sleeping loop cannot tell a fast client from a slow one (it adds its own wake-up to every gap);
 *   a probe that catches the next request reopens the window.
 *
 * A maximum of 0 turns polling off. An idle mount polls once, for at most the window, and sleeps.
 */
import { VdiskError } from '../../io/errors';

/**
 * 300 µs: the gap after a 128 KiB psync write's reply is 100-300 µs here (fio copies the next
 * 128 KiB into the request), a 4 KiB one's 10-40 µs; a poll that catches the request ends early.
 */
export const DEFAULT_POLL_MAX_US = 300;
/** The first window after it shrank to 0 (QEMU starts at 4 µs too). */
const FIRST_STEP_US = 4;
const FAR_POINTS = 4;
const PROBE_EVERY = 32;

export class AdaptivePoll {
  private windowUs: number;
  /** The window of the poll in progress (a probe polls longer than windowUs). */
  private usedUs = 0;
  private farPoints = 0;
  private sinceProbe = 0;

  constructor(readonly maxUs: number) {
    if (!Number.isFinite(maxUs) || maxUs < 0) throw VdiskError.invalid(`--poll-max-us must be a number ≥ 0, got ${maxUs}`);
    this.windowUs = maxUs;
  }

  /** The queue ran empty: how long to poll now, in milliseconds (performance.now()'s unit). */
  begin(): number {
    this.usedUs = this.windowUs;
    if (this.windowUs === 0 && ++this.sinceProbe >= PROBE_EVERY) {
      this.sinceProbe = 0;
      this.usedUs = this.maxUs;
    }
    return this.usedUs / 1000;
  }

  /** The next request came `waitedMs` after begin() (polling included). */
  adjust(waitedMs: number): void {
    const waitedUs = waitedMs * 1000;
    if (waitedUs <= this.usedUs) {
      this.farPoints = Math.max(0, this.farPoints - 1);
      if (this.usedUs > this.windowUs) this.windowUs = this.usedUs; // a probe caught it
    } else if (waitedUs <= this.maxUs) {
      this.farPoints = Math.max(0, this.farPoints - 1);
      this.windowUs = Math.min(this.maxUs, this.windowUs === 0 ? FIRST_STEP_US : this.windowUs * 2);
    } else if (++this.farPoints >= FAR_POINTS) {
      this.windowUs = this.windowUs / 2 < FIRST_STEP_US ? 0 : this.windowUs / 2;
    }
  }

  /** The current window in µs (tests, --stats). */
  get currentUs(): number {
    return this.windowUs;
  }
}
