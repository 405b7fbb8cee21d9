/**
 * A background `vdiskfs mount` tells what it did (log path, each image left out and why, a
 * summary), and `vdiskfs unmount` shows the counters of a --stats mount.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { CLI, isMounted, tempDir } from '../helpers/mount';
import { readPid } from '../../src/cli/pidfile';

let dir: { path: string; cleanup(): Promise<void> } | undefined;
let mnt = '';

afterEach(async () => {
  if (mnt && isMounted(mnt)) spawnSync(process.execPath, [CLI, 'unmount', mnt]);
  if (mnt && isMounted(mnt)) spawnSync('umount', ['-l', mnt]);
  const pid = mnt ? readPid(mnt) : undefined; // the daemon this test started, if it outlived its mount
  if (pid)
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  await dir?.cleanup();
});

it('prints the log path, one line per image left out with its reason, a summary; unmount prints --stats counters', async () => {
  dir = await tempDir();
  const images = path.join(dir.path, 'images');
  mnt = path.join(dir.path, 'mnt');
  const log = path.join(dir.path, 'mount.log');
  fs.mkdirSync(path.join(images, 'sub'), { recursive: true });
  fs.mkdirSync(mnt);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(images, 'a.qcow2'), '16M']);
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', path.join(images, 'sub', 'b.vmdk'), '16M']);
  fs.writeFileSync(path.join(images, 'broken.qcow2'), 'not an image at all');
  const r = spawnSync(process.execPath, [CLI, 'mount', '--stats', '--log-file', log, images, mnt], { encoding: 'utf8', timeout: 60_000 });
  expect(r.status, r.stderr).toBe(0);
  expect(isMounted(mnt)).toBe(true);
  expect(r.stdout).toContain(`vdiskfs: logging to ${log}\n`);
  expect(r.stdout).toContain(`vdiskfs: ${mnt}: 2 images shown, 1 left out\n`);
  expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^vdiskfs: left out broken\.qcow2: .*raw.*qcow2/)]);

  const fd = fs.openSync(path.join(mnt, 'a.qcow2.raw'), 'r+');
  fs.writeSync(fd, Buffer.alloc(65536, 9), 0, 65536, 0);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  expect(fs.readFileSync(path.join(mnt, 'sub', 'b.vmdk.raw')).length).toBe(16 << 20); // read only: counted too
  const u = spawnSync(process.execPath, [CLI, 'unmount', mnt], { encoding: 'utf8', timeout: 60_000 });
  expect(u.status, u.stderr).toBe(0);
  expect(isMounted(mnt)).toBe(false);
  expect(u.stdout).toMatch(/^stats a\.qcow2:\n {4}host reads: \d+\n {4}host writes: [1-9]/m);
  expect(u.stdout).toMatch(/^stats sub\/b\.vmdk:$/m);
  expect(Number(/^ {4}bytes written: (\d+)$/m.exec(u.stdout)?.[1])).toBeGreaterThanOrEqual(65536); // data plus metadata
});

it('without --stats, unmount prints nothing', async () => {
  dir = await tempDir();
  const images = path.join(dir.path, 'images');
  mnt = path.join(dir.path, 'mnt');
  fs.mkdirSync(images);
  fs.mkdirSync(mnt);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(images, 'a.qcow2'), '16M']);
  const r = spawnSync(process.execPath, [CLI, 'mount', '--log-file', path.join(dir.path, 'log'), images, mnt], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  expect(r.status, r.stderr).toBe(0);
  expect(r.stdout).toMatch(/1 image shown, 0 left out/);
  expect(r.stderr).toBe('');
  const u = spawnSync(process.execPath, [CLI, 'unmount', mnt], { encoding: 'utf8', timeout: 60_000 });
  expect(u.status, u.stderr).toBe(0);
  expect(u.stdout).toBe('');
});
