/** `mount -t vdiskfs` through mount/mount.vdiskfs: options translated, a real mount, read-only honoured. */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { CLI, REPO, isMounted, tempDir } from '../helpers/mount';

let dir: { path: string; cleanup(): Promise<void> } | undefined;
let mnt = '';

afterEach(async () => {
  if (mnt && isMounted(mnt)) spawnSync(process.execPath, [CLI, 'unmount', mnt]);
  if (mnt && isMounted(mnt)) spawnSync('umount', ['-l', mnt]);
  await dir?.cleanup();
});

it('mount.vdiskfs turns fstab-style options into a vdiskfs mount', async () => {
  dir = await tempDir();
  const images = path.join(dir.path, 'images');
  mnt = path.join(dir.path, 'mnt');
  fs.mkdirSync(images);
  fs.mkdirSync(mnt);
  fs.writeFileSync(path.join(images, 'd.img'), Buffer.alloc(1 << 20, 7));
  // A shim on PATH stands for the installed `vdiskfs`.
  const bin = path.join(dir.path, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'vdiskfs'), `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`, { mode: 0o755 });
  const env = { ...process.env, PATH: `${bin}:${process.env.PATH}` };
  execFileSync(path.join(REPO, 'mount/mount.vdiskfs'), [images, mnt, '-o', 'ro,include_raw,nofail'], { env, stdio: 'pipe' });
  expect(isMounted(mnt)).toBe(true);
  expect(fs.readdirSync(mnt)).toEqual(['d.img.raw']);
  expect(fs.readFileSync(path.join(mnt, 'd.img.raw'))[0]).toBe(7);
  expect(() => fs.openSync(path.join(mnt, 'd.img.raw'), 'r+')).toThrow(/EROFS/);
  execFileSync(process.execPath, [CLI, 'unmount', mnt]);
  expect(isMounted(mnt)).toBe(false);
});
