/**
 * fstab: `mount -a` run twice must be a quiet success the second time. mount(8) finds the helper
 * only in /sbin, so the test runs in a private mount namespace whose /usr/sbin is an overlay that
 * adds mount.vdiskfs: nothing on the host changes, and the namespace goes with the test.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { CLI, REPO, tempDir } from '../helpers/mount';
import { readPid } from '../../src/cli/pidfile';

let dir: { path: string; cleanup(): Promise<void> } | undefined;
let mnt = '';

afterEach(async () => {
  // The mount lives in the test's namespace; if the script failed midway its daemon may still run.
  const pid = mnt ? readPid(mnt) : undefined;
  if (pid)
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      /* gone */
    }
  await dir?.cleanup();
});

it('mount -a twice: the first mounts, the second is a quiet success; the mount serves', async () => {
  dir = await tempDir();
  const d = dir.path;
  const images = path.join(d, 'images');
  mnt = path.join(d, 'mnt');
  for (const p of [images, mnt, `${d}/up`, `${d}/work`, `${d}/bin`]) fs.mkdirSync(p);
  spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(images, 'a.qcow2'), '16M']);
  fs.copyFileSync(path.join(REPO, 'mount/mount.vdiskfs'), `${d}/up/mount.vdiskfs`);
  fs.chmodSync(`${d}/up/mount.vdiskfs`, 0o755);
  // mount(8) gives helpers a fixed PATH: VDISKFS names the CLI (as the helper's header says).
  fs.writeFileSync(`${d}/bin/vdiskfs`, `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`, { mode: 0o755 });
  fs.writeFileSync(`${d}/fstab`, `${images} ${mnt} vdiskfs ro,nofail 0 0\n`);
  const script = [
    `mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir=${d}/up,workdir=${d}/work /usr/sbin || exit 90`,
    `export VDISKFS=${d}/bin/vdiskfs`,
    `mount -a -T ${d}/fstab > ${d}/first.out 2>&1; echo "first=$?"`,
    `mount -a -T ${d}/fstab > ${d}/second.out 2>&1; echo "second=$?"`,
    `ls ${mnt}`,
    `$VDISKFS unmount ${mnt}; echo "unmount=$?"`,
  ].join('\n');
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { encoding: 'utf8', timeout: 90_000 });
  expect(r.stdout, r.stderr).toContain('first=0\n');
  expect(r.stdout).toContain('second=0\n');
  expect(fs.readFileSync(`${d}/second.out`, 'utf8')).toBe('');
  expect(r.stdout).toContain('a.qcow2.raw\n');
  expect(r.stdout).toContain('unmount=0\n');
});
