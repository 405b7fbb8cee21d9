/** Runs the real binary (dist/src/cli/main.js) and qemu-img side by side in one folder. */
import { spawnSync } from 'node:child_process';
import { CLI } from '../helpers/mount';

export interface Ran {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function vdiskfs(cwd: string, ...args: string[]): Ran {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function qemuImgIn(cwd: string, ...args: string[]): Ran {
  const r = spawnSync('qemu-img', args, { cwd, encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A user mistake is one line on stderr, prefixed, and never called a bug or shown as a stack. */
export function expectOneLineError(r: Ran): string {
  if (r.status === 0) throw new Error(`expected a failure, got exit 0: ${r.stdout}`);
  const lines = r.stderr.trim().split('\n');
  if (lines.length !== 1 || !lines[0]!.startsWith('vdiskfs: ') || /looks like a bug|^\s+at /m.test(r.stderr)) {
    throw new Error(`not one clear line:\n${r.stderr}`);
  }
  return lines[0]!;
}
