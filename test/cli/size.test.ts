import { describe, expect, it } from 'vitest';
import { formatSize, parseOptionList, parseSize } from '../../src/cli/size';

describe('sizes and option lists, as qemu-img spells them', () => {
  it('parses suffixes and refuses nonsense', () => {
    expect(parseSize('1G')).toBe(2 ** 30);
    expect(parseSize('512M')).toBe(512 * 2 ** 20);
    expect(parseSize('64k')).toBe(65536);
    expect(parseSize('1.5G')).toBe(1.5 * 2 ** 30);
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('10GiB')).toBe(10 * 2 ** 30);
    expect(() => parseSize('ten')).toThrow(/invalid size 'ten'/);
    expect(() => parseSize('9E')).toThrow(/too large/);
  });
  it('formats like qemu-img info', () => {
    expect(formatSize(2 ** 30)).toBe('1 GiB');
    expect(formatSize(196 * 1024)).toBe('196 KiB');
    expect(formatSize(500)).toBe('500 bytes');
  });
  it('splits -o lists, repeated or comma-separated', () => {
    expect(parseOptionList(['cluster_size=4k,compat=1.1', 'lazy_refcounts=on'])).toEqual({
      cluster_size: '4k',
      compat: '1.1',
      lazy_refcounts: 'on',
    });
    expect(parseOptionList('extended_l2')).toEqual({ extended_l2: 'on' });
  });
});
