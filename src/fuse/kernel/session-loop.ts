/**
 * The request loop of the kernel transport. Design (measured: the cost per request is thread
 * hops and event-loop turns, not JavaScript; research/fuse-transport):
 *
 * - The main thread owns everything: images, mergers, /dev/fuse. /dev/fuse is non-blocking and
 *   read (readOrErrno: no exception for the EAGAIN that ends every batch) into ONE preallocated
 *   buffer of max_write + headers.
 * - A pump drains the queued requests (up to BATCH) and dispatches each. Dispatch takes what it
 *   needs from the buffer synchronously (the merger copies write payloads at once). A request
 *   whose work is synchronous host I/O (SYNC_IO_MAX in io/host-file.ts) resolves within
 *   microtasks and is answered by write(2) on /dev/fuse (writeOrErrno): no thread hop. A read whose mapping
 *   is cached and whose bytes are small or all in the host page cache (Image.readSync, up to
 *   1 MiB), and an O_DIRECT write in place (Image.writeSync), are
 *   answered inside dispatch(); the pump then goes on
 *   from a queued microtask, as it would from the reply of an asynchronous request.
 * - Once every dispatched request is answered (the adapter's reply calls answered()), the pump
 *   goes on right there, without an event-loop turn, for at most BATCH requests or TURN_MS;
 *   then a setImmediate turn lets timers (the merger's --merge-delay flush), thread-pool
 *   completions (fdatasync, large host I/O) and signal handlers run.
 * - When the queue is empty and nothing is pending it first runs work that waited for such a
 *   moment (io/idle-work.ts: the merger's trickle of scattered writes to the driver), one step
 *   at a time, looking for requests between steps: a synchronous client is thinking meanwhile.
 * - Then it busy-polls /dev/fuse for an adaptive
 *   window (adaptive-poll.ts, QEMU's poll-max-ns idea, --poll-max-us): a synchronous client's
 *   next request usually comes within tens of µs, and catching it awake saves the kernel's
 *   wake-up of a sleeping thread, most of a 4 KiB round trip on a VM.
 * - Nothing yet: a SHORT blocking poll() on the main thread (SHORT_POLL_MS) still catches it
 *   without a thread hop, and bounds how late a timer can be.
 * - Idle longer (IDLE_MS), or some request waiting on the thread pool: it waits in poll() on a
 *   koffi worker thread instead, so the process sleeps and completions run.
 * - An eventfd in the poll set lets stop() wake that wait.
 * - Reads fail ENODEV once the kernel ends the session (unmounted and the last open file
 *   closed, or aborted): the loop ends. A reply refused with ENOENT was for an interrupted request.
 */
import fs from 'node:fs';
import createDebug from 'debug';
import { EAGAIN, EINTR, ENODEV, ENOENT, fcntlGetFlags, fcntlSetFlags, readOrErrno, writeOrErrno } from '../../io/syscalls/files';
import { EFD_CLOEXEC, EFD_NONBLOCK, eventfd, eventfdWrite, POLLIN, PollSet } from '../../io/syscalls/poll';
import { hasIdleWork, runIdleStep } from '../../io/idle-work';
import { AdaptivePoll, DEFAULT_POLL_MAX_US } from './adaptive-poll';
import { IN_HEADER_SIZE } from './protocol/header';
import { MAX_WRITE } from './protocol/negotiate';
import { WRITE_IN_SIZE } from './protocol/rw';

const log = createDebug('vdiskfs:fuse');

const O_NONBLOCK = 0o4000;
/** Blocking wait on the main thread when the queue is empty. */
export const SHORT_POLL_MS = 1;
/** After this long without a request, wait off-thread so the process sleeps. */
export const IDLE_MS = 3;
/** Requests, and milliseconds, served before the event loop gets a turn. */
const BATCH = 64;
const TURN_MS = 1;
/** While a request source (the io_uring ring) serves, /dev/fuse is read on every this many drains. */
const DEV_EVERY = 64;
/** The kernel wants room for the largest WRITE: header + write_in + max_write. */
export const REQUEST_BUFFER_SIZE = IN_HEADER_SIZE + WRITE_IN_SIZE + MAX_WRITE + 4096;

/**
 * A second queue of requests beside /dev/fuse: FUSE over io_uring (src/fuse/io-uring/), whose
 * ring carries the requests once registered while /dev/fuse keeps FORGET and INTERRUPT. The loop
 * drains it after /dev/fuse, sleeps on its fd too, and gives it each reply first.
 */
export interface RequestSource {
  /** Polled beside /dev/fuse: readable when requests wait. */
  readonly fd: number;
  /** Dispatches up to `max` waiting requests; returns how many. */
  drain(dispatch: (buf: Buffer, n: number) => void, max: number): number;
  /** True once it carries the requests (then /dev/fuse only FORGET and INTERRUPT). */
  serving(): boolean;
  /** Before the loop sleeps on fd: false when requests arrived meanwhile (drain again instead). */
  quiet(): boolean;
  /** Sends a reply to a request this source delivered; false when the request came from /dev/fuse. */
  send(buf: Buffer, len: number): boolean;
  /** The counters for --stats. */
  readonly counts: Record<string, number>;
}

/** What the loop drives: the adapter. */
export interface RequestHandler {
  dispatch(buf: Buffer, n: number): void;
  /** Requests dispatched and not answered yet. */
  readonly pending: number;
}

export type LoopEnd = 'unmounted' | 'stopped';

export class SessionLoop {
  readonly ended: Promise<LoopEnd>;
  private end!: (why: LoopEnd) => void;
  private readonly buf = Buffer.allocUnsafe(REQUEST_BUFFER_SIZE);
  private readonly wake: number;
  private readonly polls: PollSet;
  private handler: RequestHandler | undefined;
  private lastRequest = 0;
  private turnStart = 0;
  private sinceTurn = 0;
  private pumping = false;
  private awaitingAnswers = false;
  private immediate = false;
  private offThread = false;
  private stopping = false;
  private finished = false;
  /** How the loop waited, for --stats and tests. */
  readonly counts = {
    requests: 0,
    batches: 0,
    chained: 0,
    turns: 0,
    idleSteps: 0,
    spinsCaught: 0,
    spinsMissed: 0,
    shortPolls: 0,
    offThreadWaits: 0,
  };
  /** /dev/fuse is read on the next drain (after a wait), or after DEV_EVERY drains while a ring serves. */
  private devDue = true;
  private devSkips = 0;
  /** When the queue ran empty after a poll that caught nothing (the next request ends the wait). */
  private emptySince: number | undefined;
  onAbandonedReply: (() => void) | undefined;

  constructor(
    private readonly fd: number,
    private readonly poll = new AdaptivePoll(DEFAULT_POLL_MAX_US),
    private readonly source?: RequestSource,
  ) {
    this.ended = new Promise((res) => (this.end = res));
    fcntlSetFlags(fd, fcntlGetFlags(fd) | O_NONBLOCK);
    this.wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    this.polls = new PollSet([
      { fd, events: POLLIN },
      { fd: this.wake, events: POLLIN },
      ...(source ? [{ fd: source.fd, events: POLLIN }] : []),
    ]);
  }

  start(handler: RequestHandler): void {
    this.handler = handler;
    this.lastRequest = performance.now();
    this.scheduleTurn();
  }

  /** Ends the loop soon, abandoning the session (failures and tests only). */
  stop(): void {
    this.stopping = true;
    eventfdWrite(this.wake, 1);
    this.scheduleTurn();
  }

  /** Writes one reply. ENOENT: the request was interrupted or its caller died; ENODEV: the session is over. */
  send = (buf: Buffer, len: number): void => {
    if (this.source?.send(buf, len)) return this.answered();
    const n = writeOrErrno(this.fd, buf, len);
    if (n === -ENOENT) this.onAbandonedReply?.();
    else if (n === -ENODEV) this.stopping = true;
    else if (n < 0) log('reply of %d bytes failed: errno %d', len, -n);
    this.answered();
  };

  /** After a reply: once the whole batch is answered, serve on without an event-loop turn (bounded). */
  private answered(): void {
    if (!this.awaitingAnswers || this.pumping || this.handler!.pending > 0) return;
    if (this.sinceTurn >= BATCH || performance.now() - this.turnStart > TURN_MS) return; // the scheduled turn goes on
    this.awaitingAnswers = false;
    this.counts.chained++;
    this.pump();
  }

  private readonly resume = (): void => this.answered();

  private scheduleTurn(): void {
    if (this.immediate) return;
    this.immediate = true;
    setImmediate(this.onTurn);
  }

  private readonly onTurn = (): void => {
    this.immediate = false;
    this.counts.turns++;
    this.turnStart = performance.now();
    this.sinceTurn = 0;
    this.awaitingAnswers = false;
    this.pump();
  };

  private pump(): void {
    if (this.pumping || this.offThread || this.finished) return;
    this.pumping = true;
    try {
      for (;;) {
        let got = this.drain();
        if (got === 0 && this.handler!.pending === 0 && hasIdleWork()) {
          // Nothing to answer: do work that waits for such a moment (io/idle-work.ts), let its
          // microtasks (synchronous host I/O) finish, then look for requests again.
          runIdleStep();
          this.counts.idleSteps++;
          this.awaitingAnswers = true;
          this.scheduleTurn();
          queueMicrotask(this.resume);
          return;
        }
        if (got === 0 && this.handler!.pending === 0) got = this.spin();
        if (got < 0) return this.finish('unmounted');
        if (this.stopping) return this.finish('stopped');
        if (got > 0) {
          // Microtasks answer what finished now; answered() or the turn goes on from there.
          this.sinceTurn += got;
          this.awaitingAnswers = true;
          this.scheduleTurn();
          // All answered already (synchronous reads): go on after the microtasks queued so far, as a reply would.
          if (this.handler!.pending === 0) queueMicrotask(this.resume);
          return;
        }
        // The ring's eventfd is reset here; requests that came meanwhile are drained, not slept on.
        if (this.source && !this.source.quiet()) continue;
        if (this.handler!.pending > 0 || performance.now() - this.lastRequest > IDLE_MS) return this.waitOffThread();
        this.counts.shortPolls++;
        this.polls.wait(SHORT_POLL_MS);
        this.devDue = true;
        if (this.polls.revents(1)) return this.finish('stopped');
        if (!this.polls.revents(0) && !(this.source && this.polls.revents(2))) return this.scheduleTurn(); // nothing yet: timers get a turn, then look again
      }
    } finally {
      this.pumping = false;
    }
  }

  /**
   * The queue is empty and nothing is pending: busy-poll for the adaptive window (adaptive-poll.ts)
   * before sleeping. Once it missed, the wait ends with the next request, which sizes the window.
   */
  private spin(): number {
    if (this.emptySince !== undefined) return 0;
    const start = performance.now();
    const until = start + this.poll.begin();
    let got = 0;
    while (got === 0 && performance.now() < until) got = this.drain();
    if (got !== 0) {
      this.poll.adjust(performance.now() - start);
      this.counts.spinsCaught++;
      return got;
    }
    this.counts.spinsMissed++;
    this.emptySince = start;
    return 0;
  }

  /** Reads and dispatches queued requests, up to BATCH. Returns how many, or -1 when the session is over. */
  private drain(): number {
    let got = 0;
    // Once the ring serves, /dev/fuse carries only FORGET and INTERRUPT: read it after a wake-up
    // and every DEV_EVERY-th drain, not on every turn of a busy poll (a syscall each).
    const skipDev = this.source?.serving() === true && !this.devDue && ++this.devSkips < DEV_EVERY;
    if (!skipDev) {
      this.devSkips = 0;
      this.devDue = false;
    }
    while (!skipDev && got < BATCH) {
      const n = readOrErrno(this.fd, this.buf);
      if (n < 0) {
        if (n === -EAGAIN || n === -EINTR) break;
        if (n === -ENOENT) continue; // interrupted before we read it
        if (n === -ENODEV) return -1;
        log('read /dev/fuse: errno %d', -n);
        return -1;
      }
      if (n === 0) return -1;
      got++;
      this.handler!.dispatch(this.buf, n);
    }
    if (this.source && got < BATCH) got += this.source.drain(this.dispatchFromSource, BATCH - got);
    if (got > 0) {
      this.lastRequest = performance.now();
      if (this.emptySince !== undefined) {
        this.poll.adjust(this.lastRequest - this.emptySince);
        this.emptySince = undefined;
      }
      this.counts.batches++;
      this.counts.requests += got;
    }
    return got;
  }

  private readonly dispatchFromSource = (buf: Buffer, n: number): void => this.handler!.dispatch(buf, n);

  /** Sleeps in poll() on a koffi worker thread; the event loop stays free meanwhile. */
  private waitOffThread(): void {
    this.counts.offThreadWaits++;
    this.offThread = true;
    this.polls.waitAsync(-1).then(
      () => {
        this.devDue = true;
        this.offThread = false;
        if (this.polls.revents(1)) return this.finish('stopped');
        this.lastRequest = performance.now();
        this.pump();
      },
      (e: Error) => {
        this.offThread = false;
        log('poll failed: %s', e.message);
        this.finish('stopped');
      },
    );
  }

  private finish(why: LoopEnd): void {
    if (this.finished) return;
    this.finished = true;
    if (!this.offThread) fs.closeSync(this.wake);
    log('session loop ended: %s (%o)', why, this.counts);
    this.end(why);
  }
}
