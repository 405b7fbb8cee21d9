/**
 * What a user meets first: a typo, a folder, a file they may not read. Every command answers in
 * one line (as qemu-img does, and failing where qemu-img fails), and --debug is accepted everywhere.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CLI, tempDir } from '../helpers/mount';
import { expectOneLineError, qemuImgIn, vdiskfs } from './cli-helpers';

let dir: { path: string; cleanup(): Promise<void> };
let cwd = '';
beforeEach(async () => {
  dir = await tempDir();
  cwd = dir.path;
  fs.chmodSync(cwd, 0o755); // the EACCES case runs as nobody, who must reach the folder
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(cwd, 'a.qcow2'), '16M']);
  fs.mkdirSync(path.join(cwd, 'folder.qcow2'));
});
afterEach(() => dir.cleanup());

describe('user mistakes are one line, never "a bug"', () => {
  for (const cmd of ['info', 'map', 'check']) {
    it(`${cmd}: a missing file, as qemu-img fails`, () => {
      const line = expectOneLineError(vdiskfs(cwd, cmd, 'nope.qcow2'));
      expect(line).toMatch(/nope\.qcow2 does not exist/);
      expect(qemuImgIn(cwd, cmd, 'nope.qcow2').status).toBe(1);
    });
    it(`${cmd}: a folder`, () => {
      expect(expectOneLineError(vdiskfs(cwd, cmd, 'folder.qcow2'))).toMatch(/is a folder/);
    });
    it(`${cmd}: a file the user may not read (EACCES, as nobody)`, () => {
      fs.chmodSync(path.join(cwd, 'a.qcow2'), 0o600);
      const r = execAsNobody(cwd, cmd, 'a.qcow2');
      expect(expectOneLineError(r)).toMatch(/a\.qcow2.*(permission denied|EACCES)/i);
      const q = spawnAsNobody('qemu-img', [cmd, 'a.qcow2'], cwd);
      expect(q.status).toBe(1);
    });
  }
  it('create: a folder that does not exist, an existing file, a bad size, a name with no format', () => {
    expect(expectOneLineError(vdiskfs(cwd, 'create', 'nodir/x.qcow2', '1M'))).toMatch(/folder nodir does not exist/);
    expect(expectOneLineError(vdiskfs(cwd, 'create', 'a.qcow2', '1M'))).toMatch(/already exists/);
    expect(expectOneLineError(vdiskfs(cwd, 'create', 'y.qcow2', '1Q'))).toMatch(/invalid size/);
    expect(expectOneLineError(vdiskfs(cwd, 'create', 'noext', '1M'))).toMatch(/-f qcow2/);
  });
  it('unmount of a folder that is not mounted', () => {
    expect(expectOneLineError(vdiskfs(cwd, 'unmount', cwd))).toMatch(/is not mounted/);
  });
  it('a system error that reaches the top is one line with its errno, not a bug', () => {
    // create into a folder nobody may write: the open fails with EACCES deep in the io layer.
    fs.mkdirSync(path.join(cwd, 'ro'), { mode: 0o555 });
    expect(expectOneLineError(execAsNobody(cwd, 'create', 'ro/x.qcow2', '1M'))).toMatch(/EACCES|permission denied/i);
  });
});

describe('--debug on every command', () => {
  it('is accepted before or after the command and keeps the file argument', () => {
    const info = vdiskfs(cwd, 'info', '--debug', 'a.qcow2');
    expect(info.status).toBe(0);
    expect(info.stdout).toMatch(/^image: a\.qcow2/m);
    expect(info.stderr).toMatch(/vdiskfs:image open/);
    expect(vdiskfs(cwd, '--debug', 'check', 'a.qcow2').status).toBe(0);
    expect(vdiskfs(cwd, 'map', 'a.qcow2', '--debug').status).toBe(0);
    expect(vdiskfs(cwd, 'create', '--debug', 'b.qcow2', '1M').status).toBe(0);
    // unmount and mount parse --debug too: they fail for their own reason, not "Unknown argument".
    expect(expectOneLineError(vdiskfs(cwd, 'unmount', '--debug', cwd))).toMatch(/is not mounted/);
    expect(vdiskfs(cwd, 'mount', '--debug', 'nope', 'nomnt').stderr).toMatch(/does not exist/);
  });
  it('-U does not swallow the file name', () => {
    for (const cmd of ['info', 'check', 'map']) expect(vdiskfs(cwd, cmd, '-U', 'a.qcow2').status, cmd).toBe(0);
  });
});

/** setpriv as uid/gid 65534: root reads everything, so EACCES needs another user. */
function spawnAsNobody(cmd: string, args: string[], cwd: string) {
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', cmd, ...args], { cwd, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function execAsNobody(cwd: string, ...args: string[]) {
  return spawnAsNobody(process.execPath, [CLI, ...args], cwd);
}

describe('reportFatal', () => {
  it('a raw Node fs error (no VdiskError around it) is one line naming the path and errno', async () => {
    const { reportFatal } = await import('../../src/cli/output');
    const written: string[] = [];
    const orig = process.stderr.write.bind(process.stderr);
    process.stderr.write = (s: string) => (written.push(String(s)), true);
    try {
      const e = await fs.promises.open(path.join(cwd, 'missing.vmdk')).catch((x: unknown) => x);
      expect(reportFatal(e)).toBe(1);
    } finally {
      process.stderr.write = orig;
    }
    expect(written).toEqual([`vdiskfs: ${path.join(cwd, 'missing.vmdk')}: no such file or folder (ENOENT)\n`]);
  });
});
