import { describe, expect, it } from 'vitest';
import { possibleCpus } from '../../../src/fuse/io-uring/io-uring-transport';

describe('possibleCpus (the kernel registers one FUSE ring queue per possible CPU)', () => {
  it('counts the ranges and singles of /sys/devices/system/cpu/possible', () => {
    expect(possibleCpus('0\n')).toBe(1);
    expect(possibleCpus('0-1\n')).toBe(2);
    expect(possibleCpus('0-3,6,8-9\n')).toBe(7);
  });
});
