import { describe, expect, it } from 'vitest';
import { EVERYTHING, OrderedRangeLock } from '../../src/io/range-lock';

describe('OrderedRangeLock', () => {
  it('makes an overlapping holder wait for the earlier one, in registration order', async () => {
    const lock = new OrderedRangeLock();
    const a = lock.acquire(0, 8192, false);
    const b = lock.acquire(4096, 12288, false);
    const c = lock.acquire(100_000, 104_096, false); // disjoint: free at once
    expect(a.ready).toBeNull();
    expect(b.ready).not.toBeNull();
    expect(c.ready).toBeNull();
    let bRan = false;
    void b.ready!.then(() => (bRan = true));
    await new Promise((r) => setImmediate(r));
    expect(bRan).toBe(false);
    a.release();
    await new Promise((r) => setImmediate(r));
    expect(bRan).toBe(true);
    b.release();
    c.release();
    expect(lock.count).toBe(0);
  });

  it('lets shared holders overlap each other but not an exclusive one', () => {
    const lock = new OrderedRangeLock();
    const r1 = lock.acquire(0, 4096, true);
    const r2 = lock.acquire(0, 4096, true);
    const w = lock.acquire(0, 4096, false);
    const r3 = lock.acquire(0, 4096, true);
    expect(r1.ready).toBeNull();
    expect(r2.ready).toBeNull();
    expect(w.ready).not.toBeNull();
    expect(r3.ready).not.toBeNull(); // a read after a write waits for the write
  });

  it('finds overlaps across 1 MiB chunk boundaries and huge offsets', () => {
    const lock = new OrderedRangeLock();
    const big = 2 ** 50;
    const a = lock.acquire(big - 4096, big + 3 * (1 << 20), false);
    expect(lock.acquire(big + 2 * (1 << 20), big + 2 * (1 << 20) + 4096, false).ready).not.toBeNull();
    expect(lock.acquire(big - 8192, big - 4096, false).ready).toBeNull();
    a.release();
  });

  it('registers and releases thousands of scattered holders', () => {
    const lock = new OrderedRangeLock();
    const leases = [];
    for (let i = 0; i < 20_000; i++) leases.push(lock.acquire(((i * 7919) % 20_000) * 65536, ((i * 7919) % 20_000) * 65536 + 4096, false));
    for (const l of leases) l.release();
    expect(lock.count).toBe(0);
  });

  it('run() registers synchronously: sections over one whole range run one at a time, in call order', async () => {
    const lock = new OrderedRangeLock();
    const log: string[] = [];
    await Promise.all(
      [1, 2, 3].map((i) =>
        lock.run(0, EVERYTHING, false, async () => {
          log.push(`in${i}`);
          await new Promise((r) => setTimeout(r, 5));
          log.push(`out${i}`);
        }),
      ),
    );
    expect(log).toEqual(['in1', 'out1', 'in2', 'out2', 'in3', 'out3']);
    expect(lock.count).toBe(0);
  });

  it('run() releases when its section throws', async () => {
    const lock = new OrderedRangeLock();
    await expect(
      lock.run(0, 10, false, async () => {
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect(lock.count).toBe(0);
    expect(lock.acquire(0, 10, false).ready).toBeNull();
  });

  it('a wide holder (whole range, huge discard) conflicts with chunk-indexed holders both ways', async () => {
    const lock = new OrderedRangeLock();
    const small = lock.acquire(5 << 20, (5 << 20) + 4096, false);
    const all = lock.acquire(0, EVERYTHING, false);
    expect(all.ready).not.toBeNull();
    const later = lock.acquire(2 ** 45, 2 ** 45 + 1, true);
    expect(later.ready).not.toBeNull();
    const huge = lock.acquire(2 ** 40, 2 ** 41, false); // wide, disjoint from `small`, overlaps `all`
    expect(huge.ready).not.toBeNull();
    const order: string[] = [];
    void all.ready!.then(() => order.push('all'));
    void later.ready!.then(() => order.push('later'));
    small.release();
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual(['all']);
    all.release();
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual(['all', 'later']);
    later.release();
    huge.release();
    expect(lock.count).toBe(0);
  });

  it('waits behind the latest covering holder, and still for the earlier ones it covers when that holder leaves early', async () => {
    const lock = new OrderedRangeLock();
    const a = lock.acquire(0, 4096, false);
    const cover = lock.acquire(0, EVERYTHING, false); // waits for a
    const c = lock.acquire(0, 4096, false); // waits for cover (which covers a)
    let cRan = false;
    void c.ready!.then(() => (cRan = true));
    cover.release(); // released before its turn (an error path)
    await new Promise((r) => setImmediate(r));
    expect(cRan).toBe(false); // a still holds [0, 4096)
    a.release();
    await new Promise((r) => setImmediate(r));
    expect(cRan).toBe(true);
    c.release();
    expect(lock.count).toBe(0);
  });
});
