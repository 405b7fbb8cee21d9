import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { qemuImg, qemuIo, qemuRaw } from '../../helpers/qemu';
import { readAll, rmrf, tmpDir } from './helpers';

const dir = tmpDir('read');
afterAll(() => rmrf(dir));

const M = 1 << 20;
const cases: Array<{ name: string; size: number; opts: string }> = [
  { name: 'bs1M-log1M', size: 24 * M, opts: 'block_size=1M,log_size=1M' },
  { name: 'bs8M-log4M', size: 40 * M, opts: 'block_size=8M,log_size=4M' },
  { name: 'bs32M', size: 70 * M, opts: 'block_size=32M' },
  { name: 'bs256M-small', size: 20 * M, opts: 'block_size=256M' },
  { name: 'fixed-bs1M', size: 12 * M, opts: 'block_size=1M,subformat=fixed' },
  { name: 'nozero-bs1M', size: 9 * M, opts: 'block_size=1M,block_state_zero=off' },
];

describe('vhdx read against qemu-img convert', () => {
  for (const c of cases) {
    it(`${c.name}: byte-exact`, async () => {
      const file = path.join(dir, `${c.name}.vhdx`);
      qemuImg(['create', '-f', 'vhdx', '-o', c.opts, file, String(c.size)]);
      const writes = [
        `write -P 0x11 0 64k`,
        `write -P 0x22 ${M - 4096} 8k`,
        `write -P 0x33 ${c.size - 3 * M + 512} 1M`,
        `write -P 0x44 ${Math.floor(c.size / 2)} 4k`,
        `write -z ${M * 2} 64k`,
      ];
      qemuIo(file, writes, 'vhdx');
      const raw = fs.readFileSync(qemuRaw(file, `${file}.raw`, 'vhdx'));
      const ours = await readAll(file);
      expect(ours.length).toBe(raw.length);
      expect(ours.equals(raw)).toBe(true);
      const img = await openImage(file, { writable: false });
      try {
        const info = await img.info();
        expect(info['virtual-size']).toBe(c.size);
        expect(info.format).toBe('vhdx');
        const ext = await img.map(0, img.virtualSize);
        expect(ext.reduce((n, e) => n + e.length, 0)).toBe(c.size);
        expect(ext.some((e) => e.kind === 'data')).toBe(true);
      } finally {
        await img.close();
      }
    });
  }
});
