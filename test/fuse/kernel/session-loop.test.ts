/**
 * The request loop's logic on a socket pair standing in for /dev/fuse: one end is the loop's, the
 * test plays the kernel on the other (one request at a time, so stream framing is no issue).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { afterEach, expect, it } from 'vitest';
import { AdaptivePoll } from '../../../src/fuse/kernel/adaptive-poll';
import { hasIdleWork, postIdleWork } from '../../../src/io/idle-work';
import { SessionLoop, type RequestHandler } from '../../../src/fuse/kernel/session-loop';
import { socketpair, poll, POLLIN } from '../../../src/io/syscalls';

let fds: number[] = [];
afterEach(() => {
  for (const fd of fds)
    try {
      fs.closeSync(fd);
    } catch {
      /* closed by the test */
    }
  fds = [];
});

/** A handler that echoes each request's first 8 bytes back, at once or after `delayMs`. */
function echo(loop: SessionLoop, delayMs: (req: Buffer) => number): RequestHandler & { seen: number } {
  const h = {
    seen: 0,
    pending: 0,
    dispatch(buf: Buffer, n: number) {
      h.seen++;
      const reply = Buffer.from(buf.subarray(0, Math.min(n, 8))); // copied before the loop reuses buf
      const d = delayMs(reply);
      h.pending++;
      const answer = () => {
        h.pending--;
        loop.send(reply, reply.length);
      };
      if (d === 0) void Promise.resolve().then(answer);
      else setTimeout(answer, d);
    },
  };
  return h;
}

/** The kernel's side: send one request, wait (up to 5 s) for its reply. */
async function roundTrip(kernel: number, body: Buffer): Promise<Buffer> {
  fs.writeSync(kernel, body);
  const reply = Buffer.alloc(64);
  for (let i = 0; i < 500; i++) {
    if (poll([{ fd: kernel, events: POLLIN }], 0)[0]) return reply.subarray(0, fs.readSync(kernel, reply));
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('no reply');
}

it('answers synchronous requests, lets timers fire between them, and ends when the peer goes away', async () => {
  const [ours, kernel] = socketpair();
  fds.push(kernel);
  const loop = new SessionLoop(ours);
  const h = echo(loop, () => 0);
  loop.start(h);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  for (let i = 0; i < 200; i++) {
    const req = Buffer.alloc(8);
    req.writeUInt32LE(i, 0);
    expect((await roundTrip(kernel, req)).readUInt32LE(0)).toBe(i);
  }
  clearInterval(timer);
  expect(h.seen).toBe(200);
  expect(ticks).toBeGreaterThan(0);
  fs.closeSync(kernel);
  fds = [];
  expect(await loop.ended).toBe('unmounted');
  fs.closeSync(ours);
});

it('a request that waits on the event loop is answered, and the loop sleeps off-thread meanwhile', async () => {
  const [ours, kernel] = socketpair();
  fds.push(ours, kernel);
  const loop = new SessionLoop(ours);
  const h = echo(loop, (r) => (r[0] === 1 ? 50 : 0));
  loop.start(h);
  const slow = await roundTrip(kernel, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]));
  expect(slow[0]).toBe(1);
  expect(loop.counts.offThreadWaits).toBeGreaterThan(0);
  expect((await roundTrip(kernel, Buffer.from([2, 0, 0, 0, 0, 0, 0, 0])))[0]).toBe(2);
  loop.stop();
  expect(await loop.ended).toBe('stopped');
});

it('stop() wakes a loop that sleeps waiting for requests', async () => {
  const [ours, kernel] = socketpair();
  fds.push(ours, kernel);
  const loop = new SessionLoop(ours);
  loop.start(echo(loop, () => 0));
  await new Promise((r) => setTimeout(r, 50)); // idle: now in the off-thread poll
  loop.stop();
  expect(await loop.ended).toBe('stopped');
  expect(loop.counts.requests).toBe(0);
});

/** A client in another process doing `n` blocking round trips of 8 bytes on fd 3, as fio's psync does. */
const PING_PONG = `
const fs = require('node:fs');
const req = Buffer.alloc(8), rep = Buffer.alloc(8);
for (let i = 0; i < Number(process.argv[1]); i++) {
  req.writeUInt32LE(i, 0);
  fs.writeSync(3, req);
  let got = 0;
  while (got < 8) got += fs.readSync(3, rep, got, 8 - got);
  if (rep.readUInt32LE(0) !== i) { console.error('reply ' + rep.readUInt32LE(0) + ' to ' + i); process.exit(1); }
}`;

it('busy-polls for a synchronous client (its next request is caught awake), and stops polling for a slow one', async () => {
  const [ours, kernel] = socketpair({ cloexec: false });
  fds.push(ours, kernel);
  const poll = new AdaptivePoll(5000);
  const loop = new SessionLoop(ours, poll);
  const h = echo(loop, () => 0);
  loop.start(h);
  const client = spawn(process.execPath, ['-e', PING_PONG, '2000'], { stdio: ['ignore', 'inherit', 'inherit', kernel] });
  const code = await new Promise((res) => client.on('exit', res));
  expect(code).toBe(0);
  expect(h.seen).toBe(2000);
  // A generous 5 ms maximum: even on a loaded machine (the suite runs files in parallel on 2 cores)
  // the child answers within it most of the time; the default of 300 µs is for speed, not for tests.
  expect(loop.counts.spinsCaught).toBeGreaterThan(0);
  expect(loop.counts.spinsCaught + loop.counts.spinsMissed).toBeLessThanOrEqual(2000);
  // A client pausing 20 ms between requests (past the maximum): polling is pointless, the window closes.
  for (let i = 0; i < 24; i++) {
    await roundTrip(kernel, Buffer.alloc(8));
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(poll.currentUs).toBe(0);
  loop.stop();
  expect(await loop.ended).toBe('stopped');
});

it('runs idle work (io/idle-work.ts) when its queue is empty, between requests, and still answers them', async () => {
  const [ours, kernel] = socketpair();
  fds.push(ours, kernel);
  const loop = new SessionLoop(ours);
  loop.start(echo(loop, () => 0));
  let steps = 0;
  postIdleWork({ idleStep: () => ++steps < 100_000 });
  for (let i = 0; i < 20; i++) expect((await roundTrip(kernel, Buffer.from([i, 0, 0, 0, 0, 0, 0, 0])))[0]).toBe(i);
  expect(loop.counts.idleSteps).toBeGreaterThan(0);
  while (hasIdleWork()) await new Promise((r) => setImmediate(r));
  expect(steps).toBe(100_000);
  loop.stop();
  expect(await loop.ended).toBe('stopped');
});
