/**
 * Last line of defence for "a test run leaves nothing behind": after all tests, unmount any
 * vdiskfs mount and detach any loop device still under this run's temp folders, and kill this
 * run's leftover processes. Scoped by a run id, so two test runs on one machine never touch
 * each other's mounts. Before the run, only dead mounts (daemon gone) are swept.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { readPid } from '../../src/cli/pidfile';
import { killTracked } from './pids';

const runId = randomBytes(4).toString('hex');

function mountpoints(): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter(Boolean);
}

function sweep(marker: string): void {
  // Background daemons of this run's mounts wrote their PIDs where `vdiskfs unmount` finds them
  // (read before unmounting: the mountpoint is the key).
  const daemons = mountpoints()
    .filter((p) => p.includes(marker))
    .map((p) => readPid(p))
    .filter((pid): pid is number => pid !== undefined);
  let loops = '';
  try {
    loops = execFileSync('losetup', ['-a'], { encoding: 'utf8' });
  } catch {
    /* no losetup */
  }
  for (const line of loops.split('\n')) {
    const m = /^(\/dev\/loop\d+):.*\((.*)\)/.exec(line);
    if (m && m[2]!.includes(marker)) {
      for (const p of mountpoints())
        if (p.includes(marker))
          try {
            execFileSync('umount', ['-l', p], { stdio: 'ignore' });
          } catch {
            /* ignore */
          }
      try {
        execFileSync('losetup', ['-d', m[1]!], { stdio: 'ignore' });
      } catch {
        /* ignore */
      }
    }
  }
  for (const p of mountpoints())
    if (p.includes(marker))
      try {
        execFileSync('umount', ['-l', p], { stdio: 'ignore' });
      } catch {
        /* ignore */
      }
  for (const pid of daemons)
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  killTracked(runId);
}

export function setup(): void {
  process.env.VDISKFS_TEST_RUN = runId;
  // Mounts left by an earlier, killed run: their daemon is gone, so stat fails with ENOTCONN.
  for (const p of mountpoints()) {
    if (!p.includes('/vdiskfs-test-')) continue;
    try {
      fs.statSync(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOTCONN')
        try {
          execFileSync('umount', ['-l', p], { stdio: 'ignore' });
        } catch {
          /* ignore */
        }
    }
  }
}

export function teardown(): void {
  sweep(`/vdiskfs-test-${runId}-`);
}
