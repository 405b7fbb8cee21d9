/**
 * `--transport io-uring` (FUSE over io_uring, Linux 6.14+): where the kernel offers it, requests
 * go through the ring (the mount's --stats counts them), data round-trips, fio verify passes and
 * the qcow2 image is clean afterwards; where it does not, the mount is refused in one line that
 * says why. The fuse module's enable_uring is switched on for the first and off for the second,
 * and put back as it was.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, isMounted, mountFixture } from '../helpers/mount';
import { fioWriteVerify } from '../helpers/fio';

const PARAM = '/sys/module/fuse/parameters/enable_uring';
const offered = fs.existsSync(PARAM);
const fx = mountFixture();

describe('--transport io-uring', () => {
  let before: string | undefined;
  beforeAll(() => {
    if (offered) before = fs.readFileSync(PARAM, 'utf8').trim();
  });
  afterAll(() => {
    if (before !== undefined) fs.writeFileSync(PARAM, before === 'Y' ? 'Y' : 'N');
  });

  it(
    offered
      ? 'serves requests through the ring: data round-trips, fio verify passes, qemu-img check is clean'
      : 'is refused in one line on a kernel without it',
    async () => {
      const img = path.join(fx.images, 'd.qcow2');
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, '64M']);
      if (!offered) {
        const r = spawnSync(process.execPath, [CLI, 'mount', '-f', '--transport', 'io-uring', fx.images, fx.mnt], { encoding: 'utf8' });
        expect(r.status).not.toBe(0);
        expect(r.stderr.trim().split('\n')).toHaveLength(1);
        expect(r.stderr).toMatch(/io_uring/);
        return;
      }
      fs.writeFileSync(PARAM, 'Y');
      const m = await fx.mount(['--transport', 'io-uring', '--stats']);
      const view = path.join(fx.mnt, 'd.qcow2.raw');
      const data = randomBytes(3 << 20);
      const fd = fs.openSync(view, 'r+');
      fs.writeSync(fd, data, 0, data.length, 5 << 20);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      expect(
        fs
          .readFileSync(view)
          .subarray(5 << 20, 8 << 20)
          .equals(data),
      ).toBe(true);
      const r = fioWriteVerify(view, 11);
      expect(r.status, r.stderr).toBe(0);
      expect(r.job?.error).toBe(0);
      expect(await m.unmount()).toBe(0);
      expect(isMounted(fx.mnt)).toBe(false);
      const ring = /ring: ringRequests=(\d+) ringReplies=(\d+)/.exec(m.stderr());
      expect(ring, m.stderr()).not.toBeNull();
      expect(Number(ring![1])).toBeGreaterThan(100); // the requests came through the ring, not /dev/fuse
      expect(Number(ring![2])).toBe(Number(ring![1]));
      expect(spawnSync('qemu-img', ['check', img]).status).toBe(0);
    },
  );

  it.runIf(offered)('is refused in one line while the kernel has it switched off', () => {
    fs.writeFileSync(PARAM, 'N');
    const r = spawnSync(process.execPath, [CLI, 'mount', '-f', '--transport', 'io-uring', fx.images, fx.mnt], { encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/FUSE over io_uring is off in this kernel .*enable_uring/);
    expect(isMounted(fx.mnt)).toBe(false);
  });
});
