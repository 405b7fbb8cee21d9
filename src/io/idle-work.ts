/**
 * Work that need not hold up a reply: the request loop (src/fuse/kernel/session-loop.ts) runs it when its
 * queue is empty, before it polls for the next request. A synchronous client (psync fio, a loop
 * device) spends tens of µs between our reply and its next request; work done then costs it
 * nothing, where the same work done before the reply adds to every round trip. The merger posts
 * its trickle here (request-merger.ts): sending a scattered write to the driver is real work
 * (a qcow2 cluster allocation, a host write) that no caller is waiting for.
 *
 * Without such a loop (fuse-native, `vdiskfs bench`, tests) or while it never runs dry, a
 * setImmediate turn runs the work instead, so it is only ever late by one event-loop turn.
 */
import createDebug from 'debug';

const log = createDebug('vdiskfs:idle');

export interface IdleWorker {
  /** Does one unit of work; returns whether more remains. */
  idleStep(): boolean;
}

/** Steps an event-loop turn runs when the request loop has had no idle moment for them. */
const STEPS_PER_TURN = 64;

const queue: IdleWorker[] = [];
const queued = new Set<IdleWorker>();
let turnScheduled = false;

/** Asks for `w.idleStep()` calls until it returns false. Posting again while queued is a no-op. */
export function postIdleWork(w: IdleWorker): void {
  if (queued.has(w)) return;
  queued.add(w);
  queue.push(w);
  scheduleTurn();
}

export function hasIdleWork(): boolean {
  return queue.length > 0;
}

/** One step of the oldest worker; a worker with more to do goes to the back (round robin). */
export function runIdleStep(): void {
  const w = queue.shift();
  if (w === undefined) return;
  let more = false;
  try {
    more = w.idleStep();
  } catch (e) {
    // A bug in a worker must not take down the request loop or the process: drop it, say so.
    log('idle work failed: %s', (e as Error).stack ?? String(e));
  } finally {
    if (more) queue.push(w);
    else queued.delete(w);
  }
}

function scheduleTurn(): void {
  if (turnScheduled) return;
  turnScheduled = true;
  setImmediate(onTurn);
}

function onTurn(): void {
  turnScheduled = false;
  for (let i = 0; i < STEPS_PER_TURN && queue.length > 0; i++) runIdleStep();
  if (queue.length > 0) scheduleTurn();
}
