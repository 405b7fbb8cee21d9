import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DAEMON_NODE_FLAGS, missingDaemonFlags, servesInForeground } from '../../src/cli/daemon-heap';
import { pidFileFor } from '../../src/cli/pidfile';
import { trackPid } from '../helpers/pids';
import { CLI, mountFixture } from '../helpers/mount';

describe('the mount daemon heap flags', () => {
  it('names only the flags a command line lacks, and keeps a value the user chose', () => {
    expect(missingDaemonFlags([])).toEqual(DAEMON_NODE_FLAGS);
    expect(missingDaemonFlags(['--max-semi-space-size=8', '--cpu-prof'])).toEqual(['--heap-growing-percent=30']);
    expect(missingDaemonFlags([...DAEMON_NODE_FLAGS])).toEqual([]);
  });

  it('are wanted in this process only when it serves the mount itself', () => {
    for (const fg of [['-f'], ['--foreground'], ['-rf', 'x'], ['--foreground=true']]) expect(servesInForeground(fg)).toBe(true);
    for (const bg of [['-r'], ['-o', 'allow_other'], ['./images', '/mnt']]) expect(servesInForeground(bg)).toBe(false);
  });

  it('are not on the CLI first line, so short commands keep Node code cache', () => {
    const first = fs.readFileSync(CLI, 'utf8').split('\n', 1)[0];
    expect(first).toBe('#!/usr/bin/env node');
  });

  it('leave a mount that fails saying why: stdio survives the re-execution', () => {
    const r = spawnSync(process.execPath, [CLI, 'mount', '/nonexistent-images', '/nonexistent-mnt'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^vdiskfs: .*nonexistent-images/);
  });

  const fx = mountFixture();
  it('reach a foreground mount: the same process runs on with them after re-executing itself', async () => {
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(fx.images, 'a.qcow2'), '16M']);
    const m = await fx.mount();
    const argv = fs.readFileSync(`/proc/${m.proc.pid}/cmdline`, 'utf8').split('\0');
    for (const flag of DAEMON_NODE_FLAGS) expect(argv).toContain(flag);
    expect(argv).toContain(CLI);
    expect(fs.statSync(path.join(fx.mnt, 'a.qcow2.raw')).size).toBe(16 << 20);
    expect(await m.unmount()).toBe(0);
  });

  it('reach a background mount daemon, spawned with them', async () => {
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(fx.images, 'a.qcow2'), '16M']);
    execFileSync(process.execPath, [CLI, 'mount', fx.images, fx.mnt, '--log-file', path.join(fx.dir, 'log')], { stdio: 'pipe' });
    const pid = Number(fs.readFileSync(pidFileFor(fx.mnt), 'utf8'));
    trackPid(pid);
    try {
      const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      for (const flag of DAEMON_NODE_FLAGS) expect(argv).toContain(flag);
      expect(argv).toContain('--daemon-child');
    } finally {
      execFileSync(process.execPath, [CLI, 'unmount', fx.mnt], { stdio: 'pipe' });
    }
  });
});
