/**
 * Waiting on file descriptors: poll(2) on the main thread or on a koffi worker thread (PollSet,
 * the request loop's wait), and eventfd, the loop's wake-up.
 */
import fs from 'node:fs';
import { asyncCallFailed, errnoName, fail, ffi } from './ffi';

// ---- poll ----

export const POLLIN = 0x001;
export const POLLPRI = 0x002;
export const POLLOUT = 0x004;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const POLLNVAL = 0x020;

export interface PollFd {
  fd: number;
  events: number;
}

const POLLFD_SIZE = 8; // struct pollfd { int fd; short events; short revents; }

function pollBuffer(fds: PollFd[]): Buffer {
  const buf = Buffer.alloc(POLLFD_SIZE * fds.length);
  fds.forEach((p, i) => {
    buf.writeInt32LE(p.fd, i * POLLFD_SIZE);
    buf.writeInt16LE(p.events, i * POLLFD_SIZE + 4);
  });
  return buf;
}

const revents = (buf: Buffer, n: number): number[] => Array.from({ length: n }, (_, i) => buf.readUInt16LE(i * POLLFD_SIZE + 6));

/** Waits up to timeoutMs (-1: forever) for events; returns each fd's revents (all 0 on timeout). EINTR is retried. */
export function poll(fds: PollFd[], timeoutMs: number): number[] {
  const f = ffi();
  const buf = pollBuffer(fds);
  for (;;) {
    if (f.poll(buf, fds.length, timeoutMs) >= 0) return revents(buf, fds.length);
    if (errnoName(f) !== 'EINTR') fail(f, 'poll', `${fds.length} fds`, { fds: fds.map((p) => p.fd) });
  }
}

/** poll() on one of koffi's worker threads, for a caller whose event loop must keep running meanwhile. */
export function pollAsync(fds: PollFd[], timeoutMs: number): Promise<number[]> {
  const f = ffi();
  const buf = pollBuffer(fds);
  return new Promise((resolve, reject) => {
    f.poll.async(buf, fds.length, timeoutMs, (err: unknown, r: number) => {
      if (err) return reject(asyncCallFailed('poll', err));
      if (r >= 0) return resolve(revents(buf, fds.length));
      // errno lives on the worker thread: ask again without waiting, here, to learn why (EINTR won't repeat).
      try {
        resolve(poll(fds, 0));
      } catch (e) {
        reject(e instanceof Error ? e : asyncCallFailed('poll', e));
      }
    });
  });
}

/**
 * A fixed set of fds polled again and again (a request loop): the pollfd array is built once,
 * and no array is allocated per call. revents(i) reads what the last wait found.
 */
export class PollSet {
  private readonly buf: Buffer;

  constructor(readonly fds: readonly PollFd[]) {
    this.buf = pollBuffer([...fds]);
  }

  /** Waits up to timeoutMs; returns how many fds have events (0 on timeout or EINTR: the caller looks again). */
  wait(timeoutMs: number): number {
    const f = ffi();
    const n = f.poll(this.buf, this.fds.length, timeoutMs) as number;
    if (n >= 0) return n;
    if (errnoName(f) === 'EINTR') return 0;
    return fail(f, 'poll', `${this.fds.length} fds`);
  }

  /** wait() on one of koffi's worker threads: the event loop keeps running meanwhile. */
  waitAsync(timeoutMs: number): Promise<number> {
    const f = ffi();
    return new Promise((resolve, reject) => {
      f.poll.async(this.buf, this.fds.length, timeoutMs, (err: unknown, n: number) => {
        if (err) reject(asyncCallFailed('poll', err));
        else resolve(Math.max(0, n)); // -1: EINTR on the worker (or worse): the caller looks again
      });
    });
  }

  revents(i: number): number {
    return this.buf.readUInt16LE(i * POLLFD_SIZE + 6);
  }
}

// ---- eventfd ----

export const EFD_SEMAPHORE = 0x1;
export const EFD_NONBLOCK = 0x800;
export const EFD_CLOEXEC = 0x80000;

export function eventfd(initval: number, flags: number): number {
  const f = ffi();
  const fd = f.eventfd(initval, flags);
  if (fd < 0) fail(f, 'eventfd', `initval ${initval}`, { flags });
  return fd;
}

/** Adds n to the eventfd's counter. */
export function eventfdWrite(fd: number, n: number): void {
  const buf = Buffer.alloc(8);
  buf.writeBigUInt64LE(BigInt(n));
  fs.writeSync(fd, buf, 0, 8);
}

/** Reads and resets the counter (EFD_SEMAPHORE: takes 1). Returns 0 when a non-blocking eventfd is at zero. */
export function eventfdRead(fd: number): number {
  const buf = Buffer.alloc(8);
  try {
    fs.readSync(fd, buf, 0, 8, null);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return 0;
    throw e;
  }
  return Number(buf.readBigUInt64LE());
}
