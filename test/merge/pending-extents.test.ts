import { describe, expect, it } from 'vitest';
import { PendingExtents } from '../../src/merge/pending-extents';
import { rng } from '../helpers/qemu';

describe('PendingExtents', () => {
  it('appends a sequential stream into one slab', () => {
    const p = new PendingExtents(1 << 20);
    let x: ReturnType<typeof p.put> | undefined;
    for (let i = 0; i < 100; i++) x = p.put(i * 4096, Buffer.alloc(4096, i), true);
    expect(p.size).toBe(1);
    expect(p.bytes).toBe(100 * 4096);
    expect(x!.buf[99 * 4096]).toBe(99);
    expect(x!.buf.length).toBeLessThanOrEqual(1 << 20);
  });

  it('bridges extents with a write touching both, later bytes winning', () => {
    const p = new PendingExtents(1 << 20);
    p.put(0, Buffer.alloc(10, 1), true);
    p.put(20, Buffer.alloc(10, 2), false);
    expect(p.size).toBe(2);
    const x = p.put(5, Buffer.alloc(20, 3), false);
    expect(p.size).toBe(1);
    expect([x.start, x.end, x.acked]).toEqual([0, 30, true]);
    expect([...x.buf.subarray(0, 30)]).toEqual([...Array(5).fill(1), ...Array(20).fill(3), ...Array(5).fill(2)]);
    expect(p.bytes).toBe(30);
  });

  it('matches a byte model under random puts, finds overlaps, removes', () => {
    const rand = rng(7);
    const size = 100_000;
    const model = new Int16Array(size).fill(-1);
    const p = new PendingExtents(64 * 1024);
    for (let k = 0; k < 3000; k++) {
      const len = 1 + Math.floor(rand() * 3000);
      const off = Math.floor(rand() * (size - len));
      const v = k & 0xff;
      p.put(off, Buffer.alloc(len, v), true);
      model.fill(v, off, off + len);
    }
    let bytes = 0;
    for (const x of p.overlapping(0, size)) {
      bytes += x.end - x.start;
      for (let i = x.start; i < x.end; i++) expect(x.buf[i - x.start]).toBe(model[i]);
      expect(x.start === 0 || model[x.start - 1] === -1).toBe(true); // maximal: nothing pending just before
    }
    expect(bytes).toBe(p.bytes);
    expect(bytes).toBe(model.filter((v) => v >= 0).length);
    const some = p.overlapping(50_000, 50_001);
    for (const x of some) p.remove(x);
    expect(p.overlapping(50_000, 50_001)).toEqual([]);
    const before = p.size;
    const rest = p.takeAll();
    expect(rest.length).toBe(before);
    expect([p.size, p.bytes]).toEqual([0, 0]);
  });

  it('reuses one-page buffers given back, and never a view into a shared buffer', () => {
    const p = new PendingExtents(1 << 20);
    const a = p.put(0, Buffer.alloc(4096, 1), true);
    p.remove(a);
    p.recycle(a.buf); // its driver write is done
    const b = p.put(1 << 20, Buffer.alloc(4096, 2), true);
    expect(b.buf).toBe(a.buf); // the same memory, refilled
    expect(b.buf[0]).toBe(2);
    // A view (a tail cut from a bigger buffer, Node's pool) is not taken back.
    const shared = Buffer.alloc(8192);
    p.recycle(shared.subarray(4096));
    const c = p.put(2 << 20, Buffer.alloc(4096, 3), true);
    expect(c.buf.buffer).not.toBe(shared.buffer);
    expect(c.buf.byteOffset).toBe(0);
  });
});
