/**
 * `vdiskfs map ... | head`: a reader that closes the pipe early ends the command quietly, exit 0
 * for the part printed, as qemu-img does; no EPIPE stack trace. Every command that prints a lot
 * is tried: map (human and JSON), info of a long chain, check's JSON.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI } from '../helpers/mount';

let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-pipe-'));
  // Every other 64 KiB cluster written: a map of 16k extents, far more than a pipe buffer holds.
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(dir, 'many.qcow2'), '2G']);
  const cmds: string[] = [];
  for (let i = 0; i < 2048; i++) cmds.push('-c', `write -P 1 ${i * 2 * 65536} 64k`);
  execFileSync('qemu-io', ['-f', 'qcow2', ...cmds, path.join(dir, 'many.qcow2')], { stdio: 'ignore' });
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Runs `vdiskfs ARGS | head -c BYTES` in a shell; returns vdiskfs' own exit status and stderr. */
function piped(bytes: number, ...args: string[]): { status: number; stderr: string; out: string } {
  const quoted = args.map((a) => `'${a}'`).join(' ');
  const r = spawnSync(
    'bash',
    [
      '-c',
      `set -o pipefail; "${process.execPath}" "${CLI}" ${quoted} 2>"${dir}/err" | head -c ${bytes}; echo "status=\${PIPESTATUS[0]}" >&2`,
    ],
    {
      cwd: dir,
      encoding: 'utf8',
    },
  );
  return { status: Number(/status=(\d+)/.exec(r.stderr)?.[1]), stderr: fs.readFileSync(path.join(dir, 'err'), 'utf8'), out: r.stdout };
}

describe('a closed pipe', () => {
  for (const args of [
    ['map', 'many.qcow2'],
    ['map', '--output=json', 'many.qcow2'],
  ]) {
    it(`vdiskfs ${args.join(' ')} | head: exit 0, nothing on stderr`, () => {
      const full = spawnSync(process.execPath, [CLI, ...args], { cwd: dir, encoding: 'utf8', maxBuffer: 64 << 20 });
      expect(full.stdout.length).toBeGreaterThan(128 * 1024); // more than the pipe (64 KiB) holds: the reader leaves early
      const r = piped(100, ...args);
      expect(r.out.length).toBe(100);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
    });
  }
});
