/**
 * The fuse-native transport (libfuse 2.9), kept as the measured baseline: always covered here,
 * whatever transport the rest of the suite runs on (VDISKFS_TEST_TRANSPORT).
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { expect, it } from 'vitest';
import { isMounted, mountFixture } from '../helpers/mount';
import { fioWriteVerify } from '../helpers/fio';

const fx = mountFixture();

it('--transport fuse-native: reads, writes, passes fio verify, unmounts with the data in the image', async () => {
  const img = path.join(fx.images, 'd.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 64 << 20);
  const m = await fx.mount(['--transport', 'fuse-native', '--include-raw']);
  const line = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((l) => l.split(' ')[4] === fx.mnt)!;
  expect(line).toMatch(/ - fuse\.vdiskfs /);
  const view = path.join(fx.mnt, 'd.img.raw');
  expect(fs.statSync(view).size).toBe(64 << 20);

  const data = randomBytes(1 << 20);
  const fd = fs.openSync(view, 'r+');
  fs.writeSync(fd, data, 0, data.length, 40 << 20);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  expect(
    fs
      .readFileSync(view)
      .subarray(40 << 20, 41 << 20)
      .equals(data),
  ).toBe(true);

  const r = fioWriteVerify(view, 7);
  expect(r.status, r.stderr).toBe(0);
  expect(r.job?.error).toBe(0);

  expect(await m.unmount()).toBe(0);
  expect(isMounted(fx.mnt)).toBe(false);
  expect(
    fs
      .readFileSync(img)
      .subarray(40 << 20, 41 << 20)
      .equals(data),
  ).toBe(true);
});
