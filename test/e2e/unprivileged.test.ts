/**
 * A user who is not root mounts with the kernel transport (fusermount3 hands over the /dev/fuse
 * fd over SCM_RIGHTS), reads and writes a view, and unmounts. The test creates the user and
 * removes it afterwards, also when it fails.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { CLI, isMounted, tempDir } from '../helpers/mount';

const user = `vdiskfs-t${randomBytes(3).toString('hex')}`;
let uid = 0;
let gid = 0;
let dir: { path: string; cleanup(): Promise<void> } | undefined;
let proc: ChildProcess | undefined;
let mnt = '';
/** Distributions ship /dev/fuse as 0666; some containers as 0600. Widened for the test, restored after. */
let fuseMode: number | undefined;

beforeAll(() => {
  const mode = fs.statSync('/dev/fuse').mode & 0o777;
  if ((mode & 0o006) !== 0o006) {
    fuseMode = mode;
    fs.chmodSync('/dev/fuse', 0o666);
  }
  execFileSync('useradd', ['-M', '-s', '/usr/sbin/nologin', user]);
  uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }));
  gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }));
});

afterAll(async () => {
  if (proc && proc.exitCode === null) {
    proc.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    if (proc.exitCode === null) proc.kill('SIGKILL');
  }
  if (mnt && isMounted(mnt)) spawnSync('umount', ['-l', mnt]);
  await dir?.cleanup();
  spawnSync('userdel', ['-f', user]);
  if (fuseMode !== undefined) fs.chmodSync('/dev/fuse', fuseMode);
});

it('a user mounts through fusermount3, reads and writes a view, and unmounts; a mountpoint not theirs and allow_other without user_allow_other are one line', async () => {
  dir = await tempDir();
  fs.chmodSync(dir.path, 0o755);
  const images = path.join(dir.path, 'images');
  mnt = path.join(dir.path, 'mnt');
  for (const d of [images, mnt]) {
    fs.mkdirSync(d);
    fs.chownSync(d, uid, gid);
  }
  const img = path.join(images, 'd.img');
  fs.writeFileSync(img, Buffer.alloc(4 << 20));
  fs.chownSync(img, uid, gid);
  const data = randomBytes(256 << 10);
  const src = path.join(dir.path, 'src');
  fs.writeFileSync(src, data, { mode: 0o644 });
  const asUser = { uid, gid, encoding: 'utf8' as const, env: { ...process.env, HOME: dir.path } };

  // Mistakes a user can make are one line each, and leave nothing mounted.
  const rootOwned = path.join(dir.path, 'not-yours');
  fs.mkdirSync(rootOwned, { mode: 0o755 });
  const denied = spawnSync(process.execPath, [CLI, 'mount', '-f', '--include-raw', images, rootOwned], asUser);
  expect(denied.status).not.toBe(0);
  expect(denied.stderr.trim().split('\n')).toHaveLength(1);
  expect(denied.stderr).toMatch(/^vdiskfs: cannot mount on .*not-yours: .*(permission|access)/i);
  expect(isMounted(rootOwned)).toBe(false);
  if (!/^\s*user_allow_other\s*$/m.test(fs.existsSync('/etc/fuse.conf') ? fs.readFileSync('/etc/fuse.conf', 'utf8') : '')) {
    const other = spawnSync(process.execPath, [CLI, 'mount', '-f', '-o', 'allow_other', '--include-raw', images, mnt], asUser);
    expect(other.stderr).toMatch(/^vdiskfs: -o allow_other needs user_allow_other in \/etc\/fuse\.conf/);
    expect(isMounted(mnt)).toBe(false);
  }

  proc = spawn(process.execPath, [CLI, 'mount', '-f', '--include-raw', images, mnt], { ...asUser, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d) => (log += d));
  const exited = new Promise<number | null>((res) => proc!.once('exit', (c) => res(c)));
  for (let i = 0; i < 300 && !isMounted(mnt) && proc.exitCode === null; i++) await new Promise((r) => setTimeout(r, 25));
  expect(isMounted(mnt), log).toBe(true);
  const line = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((l) => l.split(' ')[4] === mnt)!;
  expect(line).toMatch(new RegExp(` - fuse\\.vdiskfs vdiskfs .*user_id=${uid},group_id=${gid}`));

  const view = path.join(mnt, 'd.img.raw');
  const dd = spawnSync('dd', [`if=${src}`, `of=${view}`, 'bs=64k', 'seek=2', 'conv=notrunc,fsync', 'status=none'], asUser);
  expect(dd.status, dd.stderr).toBe(0);
  const back = spawnSync('dd', [`if=${view}`, 'bs=64k', 'skip=2', 'count=4', 'status=none'], { ...asUser, encoding: 'buffer' as const });
  expect(back.status).toBe(0);
  expect(Buffer.from(back.stdout).equals(data)).toBe(true);

  const u = spawnSync(process.execPath, [CLI, 'unmount', mnt], asUser);
  expect(u.status, u.stderr).toBe(0);
  expect(await exited).toBe(0);
  expect(isMounted(mnt)).toBe(false);
  expect(
    fs
      .readFileSync(img)
      .subarray(2 * 65536, 2 * 65536 + data.length)
      .equals(data),
  ).toBe(true);
});
