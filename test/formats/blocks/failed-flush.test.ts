/**
 * A flush whose table write fails (an I/O error, a full disk) leaves the tables dirty, so the
 * next flush, or close, writes them. Found by the power-cut storms with failing host writes: the
 * VDI and VHD tables forgot their dirty sectors before the write, so after one failed flush the
 * next found nothing to write, acknowledged the writes, and the blocks were lost even at close.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import type { HostFile } from '../../../src/io/host-file';
import { tmpDir } from '../../helpers/image-io';
import { failWrites } from '../../helpers/host-faults';
import { qemuCheck, qemuImg, qemuIo } from '../../helpers/qemu';

const dir = tmpDir('blocks-failed-flush');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

function hostFileOf(img: unknown): HostFile {
  return (img as { table: { file: HostFile } }).table.file;
}

describe('a failed table write at flush', () => {
  for (const { format, ext } of [
    { format: 'vdi', ext: 'vdi' },
    { format: 'vpc', ext: 'vhd' },
  ] as const) {
    it(`${format}: keeps the tables dirty; the next flush writes them and QEMU reads the blocks`, async () => {
      const f = path.join(dir, `t.${ext}`);
      qemuImg(['create', '-q', '-f', format, f, '16M']);
      const img = await openImage(f, { writable: true });
      const file = hostFileOf(img);
      let tableWrites = 0;
      try {
        await img.write(4 * MiB, Buffer.alloc(64 * 1024, 0x5a));
        const restore = failWrites(file, 'bat', { times: Infinity });
        await expect(img.flush()).rejects.toThrow(/EIO/);
        restore();
        const write = file.write.bind(file);
        file.write = (data, pos, tag) => {
          if (tag === 'bat' || tag === 'header') tableWrites++;
          return write(data, pos, tag);
        };
        await img.flush();
      } finally {
        await img.close();
      }
      expect(tableWrites).toBeGreaterThan(0);
      if (format === 'vdi') {
        const check = qemuCheck(f, format);
        expect(check.ok, check.output).toBe(true);
      }
      expect(qemuIo(f, ['read -P 0x5a 4M 64k'], format)).not.toMatch(/Pattern verification failed/);
    });
  }
});
