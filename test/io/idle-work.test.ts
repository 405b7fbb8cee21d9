/** Work for idle moments: round robin between workers, and event-loop turns when no request loop runs it. */
import { expect, it } from 'vitest';
import { hasIdleWork, postIdleWork, runIdleStep } from '../../src/io/idle-work';

/** A worker with `n` steps to do, logging each as `name`. */
function worker(name: string, n: number, log: string[]) {
  return {
    left: n,
    idleStep() {
      log.push(name);
      return --this.left > 0;
    },
  };
}

it('runs workers one step at a time, round robin, until each says it is done; posting twice is one entry', () => {
  const log: string[] = [];
  const a = worker('a', 3, log);
  const b = worker('b', 1, log);
  postIdleWork(a);
  postIdleWork(b);
  postIdleWork(a);
  while (hasIdleWork()) runIdleStep();
  expect(log).toEqual(['a', 'b', 'a', 'a']);
  expect(a.left).toBe(0);
});

it('without a request loop, event-loop turns do the work', async () => {
  const log: string[] = [];
  const w = worker('w', 200, log);
  postIdleWork(w);
  expect(log).toEqual([]); // never synchronously
  for (let i = 0; i < 10 && hasIdleWork(); i++) await new Promise((r) => setImmediate(r));
  expect(log).toHaveLength(200);
  expect(hasIdleWork()).toBe(false);
});

it('a worker that throws is dropped (and logged), and the caller goes on', () => {
  postIdleWork({
    idleStep() {
      throw new Error('boom');
    },
  });
  expect(() => runIdleStep()).not.toThrow();
  expect(hasIdleWork()).toBe(false);
});
