/**
 * The request loop of the kernel transport. Design (measured: the cost per request is thread
 * hops, not JavaScript; research/fuse-transport):
 *
 * - The main thread owns everything: the images, the mergers, /dev/fuse. /dev/fuse is read
 *   non-blocking into ONE preallocated buffer of max_write + headers.
 * - A step drains a batch of queued requests and dispatches each. Dispatch takes what it needs
 *   from the buffer synchronously (write payloads are copied by the merger at once). A request
 *   whose work is synchronous host I/O (small reads and writes: SYNC_IO_MAX in io/host-file.ts)
 *   resolves within microtasks, which run as soon as the step returns, and is answered by
 *   writeSync to /dev/fuse: no thread hop at all.
 * - Between batches the loop returns to the event loop (setImmediate), so timers (the merger's
 *   --merge-delay flush), thread-pool completions (fdatasync, large host I/O) and signal handlers run.
 * - When the queue is empty it waits with a SHORT blocking poll() on the main thread (SHORT_POLL_MS):
 *   a synchronous client's next request usually comes within tens of µs, so this catches it
 *   without a hop and bounds how late a timer can be.
 * - When idle longer (IDLE_MS), or while some request waits on the thread pool, it waits with a
 *   poll() on another thread (koffi async) instead: the process sleeps, and completions run.
 * - An eventfd in the poll set lets stop() wake that wait.
 * - Reads fail with ENODEV once the kernel ends the session (unmounted and the last open file
 *   closed, or aborted): the loop ends. A reply refused with ENOENT was for an interrupted request.
 */
import * as fs from 'node:fs';
import createDebug from 'debug';
import { EFD_CLOEXEC, EFD_NONBLOCK, POLLIN, eventfd, eventfdWrite, fcntlGetFlags, fcntlSetFlags, poll, pollAsync } from '../io/syscalls';
import { OUT_HEADER_SIZE, IN_HEADER_SIZE, WRITE_IN_SIZE, MAX_WRITE } from './protocol';

const log = createDebug('vdiskfs:fuse');

const O_NONBLOCK = 0o4000;
/** Blocking wait on the main thread when the queue is empty. */
export const SHORT_POLL_MS = 1;
/** After this long without a request, wait off-thread so the process sleeps. */
export const IDLE_MS = 3;
/** Requests dispatched before the event loop gets a turn. */
const BATCH = 64;
/** The kernel wants room for the largest WRITE: header + write_in + max_write. */
export const REQUEST_BUFFER_SIZE = IN_HEADER_SIZE + WRITE_IN_SIZE + MAX_WRITE + 4096;

/** What the loop drives: the adapter. */
export interface RequestHandler {
  dispatch(buf: Buffer, n: number): void;
  /** Requests waiting on something only the event loop delivers (thread-pool I/O). */
  readonly pending: number;
}

export type LoopEnd = 'unmounted' | 'stopped';

export class SessionLoop {
  readonly ended: Promise<LoopEnd>;
  private end!: (why: LoopEnd) => void;
  private readonly buf = Buffer.allocUnsafe(REQUEST_BUFFER_SIZE);
  private readonly wake: number;
  private readonly pollSet: Array<{ fd: number; events: number }>;
  private handler: RequestHandler | undefined;
  private lastRequest = 0;
  private stopping = false;
  private finished = false;
  private waitingOffThread = false;
  /** Counters for --stats and tests: how the loop waited. */
  readonly counts = { shortPolls: 0, offThreadWaits: 0, batches: 0, requests: 0 };

  constructor(private readonly fd: number) {
    this.ended = new Promise((res) => (this.end = res));
    fcntlSetFlags(fd, fcntlGetFlags(fd) | O_NONBLOCK);
    this.wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    this.pollSet = [{ fd, events: POLLIN }, { fd: this.wake, events: POLLIN }];
  }

  start(handler: RequestHandler): void {
    this.handler = handler;
    this.lastRequest = performance.now();
    setImmediate(this.step);
  }

  /** Ends the loop soon (the session is abandoned: only for failures and tests). */
  stop(): void {
    this.stopping = true;
    eventfdWrite(this.wake, 1);
  }

  /** Writes one reply. ENOENT: the request was interrupted or its caller died; ENODEV: the session is over. */
  send = (buf: Buffer, len: number): void => {
    try {
      fs.writeSync(this.fd, buf, 0, len);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') this.onAbandonedReply?.();
      else if (code === 'ENODEV') this.stopping = true;
      else log('reply of %d bytes failed: %s', len, (e as Error).message);
    }
  };

  onAbandonedReply: (() => void) | undefined;

  private readonly step = (): void => {
    if (this.finished) return;
    for (;;) {
      const got = this.drain();
      if (got < 0) return this.finish('unmounted');
      if (this.stopping) return this.finish('stopped');
      if (got > 0) {
        // Let microtasks answer what finished, then timers and completions, then read on.
        setImmediate(this.step);
        return;
      }
      const idle = performance.now() - this.lastRequest > IDLE_MS;
      if (idle || this.handler!.pending > 0) return this.waitOffThread();
      this.counts.shortPolls++;
      const [fuse = 0, wake = 0] = poll(this.pollSet, SHORT_POLL_MS);
      if (wake) return this.finish('stopped');
      if (!fuse) {
        // Nothing yet: give timers a turn, then look again.
        setImmediate(this.step);
        return;
      }
    }
  };

  /** Reads and dispatches up to BATCH requests. Returns how many, or -1 when the session is over. */
  private drain(): number {
    let got = 0;
    while (got < BATCH) {
      let n: number;
      try {
        n = fs.readSync(this.fd, this.buf, 0, this.buf.length, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' || code === 'EINTR') break;
        if (code === 'ENOENT') continue; // the request was interrupted before we read it
        if (code === 'ENODEV') return -1;
        throw e;
      }
      if (n === 0) return -1;
      got++;
      this.handler!.dispatch(this.buf, n);
    }
    if (got > 0) {
      this.lastRequest = performance.now();
      this.counts.batches++;
      this.counts.requests += got;
    }
    return got;
  }

  /** Sleeps in poll() on a koffi worker thread; the event loop stays free meanwhile. */
  private waitOffThread(): void {
    this.counts.offThreadWaits++;
    this.waitingOffThread = true;
    pollAsync(this.pollSet, -1).then(
      ([, wake = 0]) => {
        this.waitingOffThread = false;
        if (wake) return this.finish('stopped');
        this.step();
      },
      (e: Error) => {
        this.waitingOffThread = false;
        log('poll failed: %s', e.message);
        this.finish('stopped');
      },
    );
  }

  private finish(why: LoopEnd): void {
    if (this.finished) return;
    this.finished = true;
    if (!this.waitingOffThread) fs.closeSync(this.wake);
    log('session loop ended: %s (%o)', why, this.counts);
    this.end(why);
  }
}
