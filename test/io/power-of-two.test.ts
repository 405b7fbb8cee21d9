import { describe, expect, it } from 'vitest';
import { powerOfTwoAtLeast } from '../../src/io/safe-int';

describe('powerOfTwoAtLeast', () => {
  it('agrees with 2 ** ceil(log2(n)) from 1 byte to past 2^30, at and around every power', () => {
    const want = (n: number) => (n <= 1 ? 1 : 2 ** Math.ceil(Math.log2(n)));
    const cases = [0, 1, 2, 3];
    for (let b = 2; b <= 33; b++) cases.push(2 ** b - 1, 2 ** b, 2 ** b + 1);
    cases.push(4096 + 16, (1 << 20) + 16, 128 * 1024 + 80);
    for (const n of cases) expect(powerOfTwoAtLeast(n), `n=${n}`).toBe(want(n));
  });
});
