import { describe, expect, it } from 'vitest';
import { Slots } from '../../src/merge/slots';

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
