import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { qemuCheck } from '../../helpers/qemu';
import { makeHandSparse, tmpDir } from './helpers';

/**
 * Image.writeSync on a real sparse extent whose table cache holds one table: a write across a
 * table boundary, one table resident and clean, the other created by the write. Creating it
 * inserts it into the cache, which must not evict the table the write still sets entries in
 * (found by review: the write threw "grain table N not resident", half applied when the new
 * table came first).
 */
const dir = tmpDir('write-sync');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const KiB = 1024;

describe('writeSync across a grain-table boundary with a crowded table cache', () => {
  // 4 KiB grains, 16 entries per table (64 KiB of guest space each), no tables yet.
  // The write covers grain 15 (table 0) and grain 16 (table 1).
  for (const existing of [0, 1]) {
    it(`table ${existing} resident and clean, the other created: allocated at once, both entries set, image clean`, async () => {
      const f = path.join(dir, `t${existing}.vmdk`);
      makeHandSparse(f, { capacitySectors: 2048, grainSectors: 8, gtes: 16 });
      const img = await openImage(f, { writable: true, tuning: { vmdk: { tableCacheBytes: 64 } } });
      const b = Buffer.alloc(8 * KiB, 0x22);
      try {
        await img.write(existing === 0 ? 0 : 68 * KiB, Buffer.alloc(4 * KiB, 0x11)); // creates that table
        await img.flush(); // written back: clean, still cached, first to go on eviction
        expect(img.writeSync!(60 * KiB, b)).toBe(true);
        const back = Buffer.alloc(8 * KiB);
        await img.read(60 * KiB, back);
        expect(back.equals(b)).toBe(true);
      } finally {
        await img.close();
      }
      const again = await openImage(f, { writable: false });
      try {
        const back = Buffer.alloc(8 * KiB);
        await again.read(60 * KiB, back);
        expect(back.equals(b)).toBe(true);
      } finally {
        await again.close();
      }
      const check = qemuCheck(f, 'vmdk');
      expect(check.ok, check.output).toBe(true);
    });
  }
});
