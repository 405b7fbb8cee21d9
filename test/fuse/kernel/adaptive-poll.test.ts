/** The busy-poll window's adaptation, driven with chosen gaps (µs → ms as the loop passes them). */
import { expect, it } from 'vitest';
import { AdaptivePoll } from '../../../src/fuse/kernel/adaptive-poll';

const ms = (us: number) => us / 1000;

/** One empty queue: poll for the window, the next request comes `gapUs` later. Returns the window used. */
function empty(p: AdaptivePoll, gapUs: number): number {
  const used = p.begin() * 1000;
  p.adjust(ms(gapUs));
  return used;
}

it('starts at the maximum and keeps it while requests come within the window', () => {
  const p = new AdaptivePoll(100);
  for (let i = 0; i < 50; i++) expect(empty(p, 30)).toBe(100);
  expect(p.currentUs).toBe(100);
});

it('a late request now and then is a hiccup; mostly late ones halve the window down to 0', () => {
  const p = new AdaptivePoll(100);
  for (let i = 0; i < 99; i++) empty(p, i % 3 === 0 ? 5000 : 30); // a third late, the last in time
  expect(p.currentUs).toBe(100);
  for (let i = 0; i < 3; i++) empty(p, 5000); // the points start again at 0 after a request in time
  expect(p.currentUs).toBe(100);
  empty(p, 5000);
  expect(p.currentUs).toBe(50);
  empty(p, 30);
  empty(p, 30); // back to 2 points
  for (let i = 0; i < 6; i++) empty(p, i % 2 === 0 ? 5000 : 30); // half late: no net points
  expect(p.currentUs).toBe(50);
  for (let i = 0; i < 10; i++) empty(p, 5000);
  expect(p.currentUs).toBe(0);
});

it('grows (doubling from the first step) when requests come later than the window but within the maximum', () => {
  const p = new AdaptivePoll(100);
  for (let i = 0; i < 20; i++) empty(p, 5000);
  expect(p.currentUs).toBe(0);
  const seen: number[] = [];
  for (let i = 0; i < 6; i++) {
    empty(p, 90);
    seen.push(p.currentUs);
  }
  expect(seen).toEqual([4, 8, 16, 32, 64, 100]);
});

it('a closed window probes at the maximum now and then, and reopens when the probe catches a request', () => {
  const p = new AdaptivePoll(100);
  for (let i = 0; i < 20; i++) empty(p, 5000);
  expect(p.currentUs).toBe(0);
  // A fast client whose gaps look long only because the loop sleeps (its wake-up is added to each).
  const used: number[] = [];
  for (let i = 0; i < 64 && p.currentUs === 0; i++) {
    const w = p.begin() * 1000;
    used.push(w);
    p.adjust(ms(w === 0 ? 300 : 20));
  }
  expect(used.filter((w) => w === 100)).toHaveLength(1);
  expect(used.length).toBeLessThanOrEqual(32);
  expect(p.currentUs).toBe(100);
});

it('0 turns polling off; a bad maximum is a one-line error', () => {
  const p = new AdaptivePoll(0);
  for (let i = 0; i < 100; i++) expect(empty(p, 10)).toBe(0);
  expect(() => new AdaptivePoll(-1)).toThrow(/--poll-max-us must be a number ≥ 0, got -1/);
  expect(() => new AdaptivePoll(NaN)).toThrow(/--poll-max-us/);
});
