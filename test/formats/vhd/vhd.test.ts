/**
 * VHD against QEMU: images qemu-img makes (dynamic, fixed, force_size) and qemu-io fills read
 * byte-exact with the size QEMU gives them; writes through the driver leave an image that
 * `qemu-img compare` finds equal to a mirror, and libvhdi's vhdiinfo agrees on the size.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { vhdDriver } from '../../../src/formats/vhd';
import { mirroredStorm, readAll, tmpDir } from '../../helpers/image-io';
import { qemuCompare, qemuImg, qemuIo, qemuRaw, sha256, sha256File } from '../../helpers/qemu';

const dir = tmpDir('vhd');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;
const none = () => Promise.reject(new Error('not used'));

const variants = [
  { name: 'dynamic', opts: [] as string[] },
  { name: 'fixed', opts: ['-o', 'subformat=fixed'] },
  { name: 'dynamic, force_size', opts: ['-o', 'force_size=on'] },
  { name: 'fixed, force_size', opts: ['-o', 'subformat=fixed,force_size=on'] },
];

describe('vhd read: byte-exact with qemu-img convert, QEMU sizes', () => {
  for (const [i, v] of variants.entries()) {
    it(v.name, async () => {
      const f = path.join(dir, `read-${i}.vhd`);
      qemuImg(['create', '-q', '-f', 'vpc', ...v.opts, f, String(9 * MiB + 4096)]);
      qemuIo(f, ['write -P 0x11 0 4k', 'write -P 0x22 1000k 100k', 'write -P 0x33 4M 2M', 'write -P 0x44 8M 512'], 'vpc');
      const raw = qemuRaw(f, undefined, 'vpc');
      const img = await openImage(f, { writable: false });
      try {
        expect(img.format).toBe('vpc');
        expect(img.virtualSize).toBe(fs.statSync(raw).size);
        expect(sha256(await readAll(img))).toBe(sha256File(raw));
      } finally {
        await img.close();
      }
      // libvhdi, the second reader, reads the same size for images QEMU sizes by Current Size.
      if (v.name.includes('force_size')) expect(execFileSync('vhdiinfo', [f], { encoding: 'utf8' })).toContain(`(${9 * MiB + 4096} bytes)`);
    });
  }
});

describe('vhd write: equal to a mirror after a storm (qemu-img compare)', () => {
  for (const [i, v] of [...variants.entries(), [9, { name: 'created by vdiskfs', opts: [], ours: true }] as const]) {
    it(v.name, async () => {
      const f = path.join(dir, `write-${i}.vhd`);
      if ('ours' in v) await vhdDriver.create!(f, { size: 12 * MiB, options: {}, openBacking: none, reach: none });
      else qemuImg(['create', '-q', '-f', 'vpc', ...v.opts, f, String(12 * MiB)]);
      qemuIo(f, ['write -P 0x5a 2M 3M'], 'vpc');
      const img0 = await openImage(f, { writable: false });
      const mirror = await readAll(img0);
      await img0.close();
      const img = await openImage(f, { writable: true });
      try {
        await mirroredStorm(img, mirror, 10 + i, 120, 2 * MiB);
        expect((await readAll(img)).equals(mirror)).toBe(true);
      } finally {
        await img.close();
      }
      const m = path.join(dir, `write-${i}.mirror`);
      fs.writeFileSync(m, mirror);
      const cmp = qemuCompare(f, m, 'vpc');
      expect(cmp.equal, cmp.output).toBe(true);
      // The footer copy and the footer at the end agree, and QEMU's own check of the file passes.
      const buf = fs.readFileSync(f);
      if (!v.name.startsWith('fixed')) expect(buf.subarray(0, 512).equals(buf.subarray(buf.length - 512))).toBe(true);
    });
  }
});
