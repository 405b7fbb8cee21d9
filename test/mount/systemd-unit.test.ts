/**
 * mount/vdiskfs@.service: one instance per mountpoint (escaped path), ready only once the mount
 * answers, stopped by SIGTERM. No systemd runs here, so the test checks the unit with systemd's
 * own tools (systemd-escape, systemd-analyze verify) and then runs its ExecStart and ExecStartPost
 * lines by hand, and stops the service the way systemd would: SIGTERM to the main process.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { CLI, REPO, isMounted as isMountedRaw, tempDir } from '../helpers/mount';

/** mountinfo writes a space in a path as \\040. */
const isMounted = (p: string) => isMountedRaw(p.replace(/ /g, '\\040'));

const UNIT = path.join(REPO, 'mount/vdiskfs@.service');
let dir: { path: string; cleanup(): Promise<void> } | undefined;
let mnt = '';
let proc: ReturnType<typeof spawn> | undefined;

afterEach(async () => {
  if (proc && proc.exitCode === null) proc.kill('SIGKILL');
  if (mnt && isMounted(mnt)) spawnSync('umount', ['-l', mnt]);
  await dir?.cleanup();
});

/** `Key=value` lines of the [Service] section. */
function service(): Map<string, string> {
  const text = fs.readFileSync(UNIT, 'utf8');
  const section = text.slice(text.indexOf('[Service]'), text.indexOf('[Install]'));
  return new Map(
    section
      .split('\n')
      .filter((l) => /^\w+=/.test(l))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
}

it('the instance name is the escaped mountpoint, and it round-trips through systemd-escape', () => {
  for (const p of ['/mnt/raw', '/srv/vm images/raw-ro', '/mnt/ü']) {
    const instance = spawnSync('systemd-escape', ['-p', p], { encoding: 'utf8' }).stdout.trim();
    expect(spawnSync('systemd-escape', ['-u', '-p', instance], { encoding: 'utf8' }).stdout.trim()).toBe(p);
  }
});

it('the unit: foreground mount of %f, readiness check, SIGTERM stop, no ExecStop; systemd-analyze verify finds nothing', async () => {
  const s = service();
  expect(s.get('Type')).toBe('exec');
  expect(s.get('ExecStart')).toBe('/usr/bin/env vdiskfs mount -f $OPTIONS ${IMAGES} %f');
  expect(s.get('ExecStartPost')).toMatch(/findmnt -rn -M "\$1" -t fuse\.vdiskfs/);
  expect(s.get('KillSignal')).toBe('SIGTERM');
  expect(s.get('KillMode')).toBe('mixed');
  expect(s.has('ExecStop')).toBe(false); // an ExecStop would bypass the graceful SIGTERM path
  expect(s.get('EnvironmentFile')).toBe('/etc/vdiskfs/%i.conf');
  dir = await tempDir();
  const copy = path.join(dir.path, 'vdiskfs@mnt-raw.service');
  fs.copyFileSync(UNIT, copy);
  const v = spawnSync('systemd-analyze', ['verify', '--man=no', copy], { encoding: 'utf8' });
  expect(v.stderr.split('\n').filter((l) => l.includes(copy))).toEqual([]);
});

it('ExecStart serves, ExecStartPost returns once it answers, SIGTERM stops cleanly', async () => {
  dir = await tempDir();
  const images = path.join(dir.path, 'images');
  mnt = path.join(dir.path, 'mnt raw'); // a path that needs escaping
  fs.mkdirSync(images);
  spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(images, 'a.qcow2'), '16M']);
  const s = service();
  // %f is the unescaped instance; $OPTIONS and ${IMAGES} come from the EnvironmentFile.
  const instance = spawnSync('systemd-escape', ['-p', mnt], { encoding: 'utf8' }).stdout.trim();
  const f = spawnSync('systemd-escape', ['-u', '-p', instance], { encoding: 'utf8' }).stdout.trim();
  expect(f).toBe(mnt);
  spawnSync('/bin/mkdir', ['-p', f]);
  const start = s.get('ExecStart')!.split(' ');
  expect(start.slice(0, 5)).toEqual(['/usr/bin/env', 'vdiskfs', 'mount', '-f', '$OPTIONS']);
  proc = spawn(process.execPath, [CLI, 'mount', '-f', '--read-only', images, f], { stdio: 'ignore' });
  const post = /^\/bin\/sh -c '(.*)' readiness %f$/.exec(s.get('ExecStartPost')!);
  expect(post).not.toBeNull();
  const ready = spawnSync('/bin/sh', ['-c', post![1]!, 'readiness', f], { encoding: 'utf8', timeout: 30_000 });
  expect(ready.status).toBe(0);
  expect(isMounted(mnt)).toBe(true);
  expect(fs.readdirSync(mnt)).toEqual(['a.qcow2.raw']);
  const exited = new Promise<number | null>((res) => proc!.once('exit', (code) => res(code)));
  proc.kill('SIGTERM');
  expect(await exited).toBe(0);
  expect(isMounted(mnt)).toBe(false);
});
