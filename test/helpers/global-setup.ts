/**
 * Last line of defence for "a test run leaves nothing behind": after all tests, unmount any
 * vdiskfs mount and detach any loop device still under a test temp folder, and kill leftovers.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';

function sweep(): void {
  const tmpRoot = os.tmpdir();
  const lines = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
  // Loop devices first (a mounted ext4 on a loop device keeps the FUSE mount busy).
  let loops = '';
  try { loops = execFileSync('losetup', ['-a'], { encoding: 'utf8' }); } catch { /* no losetup */ }
  for (const line of loops.split('\n')) {
    const m = /^(\/dev\/loop\d+):.*\((.*)\)/.exec(line);
    if (m && m[2]!.includes('/vdiskfs-test-')) {
      for (const l of lines) {
        const f = l.split(' ');
        if (f[9]?.startsWith(m[1]!)) try { execFileSync('umount', ['-l', f[4]!]); } catch { /* ignore */ }
      }
      try { execFileSync('losetup', ['-d', m[1]!]); } catch { /* ignore */ }
    }
  }
  for (const l of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = l.split(' ');
    if (f[4]?.startsWith(tmpRoot) && f[4].includes('/vdiskfs-test-')) {
      try { execFileSync('umount', ['-l', f[4]]); } catch { /* ignore */ }
    }
  }
  try { execFileSync('pkill', ['-f', 'main.js mount -f .*vdiskfs-test-']); } catch { /* none */ }
  try { execFileSync('pkill', ['-f', 'qemu-storage-daemon.*vdiskfs-test-']); } catch { /* none */ }
}

export function setup(): void {
  sweep();
}

export function teardown(): void {
  sweep();
}
