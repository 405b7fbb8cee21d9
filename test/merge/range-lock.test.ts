import { describe, expect, it } from 'vitest';
import { OrderedRangeLock, Slots } from '../../src/merge/range-lock';

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
});

describe('Slots', () => {
  it('hands out n slots, then queues FIFO', async () => {
    const s = new Slots(2);
    expect(s.acquire()).toBeNull();
    expect(s.acquire()).toBeNull();
    const order: number[] = [];
    const p3 = s.acquire()!.then(() => order.push(3));
    const p4 = s.acquire()!.then(() => order.push(4));
    s.release();
    s.release();
    await Promise.all([p3, p4]);
    expect(order).toEqual([3, 4]);
  });
});
