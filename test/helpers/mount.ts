/**
 * Really mounts vdiskfs (the built CLI, in the foreground, as a child process) for integration
 * tests, and always cleans up: unmount, loop devices, the process — also when a test fails.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tmp from 'tmp-promise';
import { afterEach, beforeEach } from 'vitest';
import { trackPid } from './pids';

export const REPO = path.resolve(__dirname, '../..');
export const CLI = path.join(REPO, 'dist/src/cli/main.js');
/** Every test's temp folder starts with this (with this run's id), so the global teardown finds leftovers. */
export const TMP_PREFIX = `vdiskfs-test-${process.env.VDISKFS_TEST_RUN ?? 'x'}-`;

export function isMounted(dir: string): boolean {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === dir);
}

export async function tempDir(): Promise<{ path: string; cleanup(): Promise<void> }> {
  const d = await tmp.dir({ prefix: TMP_PREFIX, unsafeCleanup: true });
  return { path: d.path, cleanup: () => d.cleanup() };
}

export interface Mounted {
  mnt: string;
  proc: ChildProcess;
  stderr(): string;
  /** Waits (up to 5 s) until the mount's log matches; its output arrives asynchronously. */
  waitForLog(re: RegExp): Promise<string>;
  /** Resolves with the exit code once the process has exited. */
  exited: Promise<number | null>;
  /** `vdiskfs unmount`, then waits for the process; returns its exit code. */
  unmount(): Promise<number | null>;
  /** Best effort, never throws: loop devices, unmount, kill. For afterEach. */
  cleanup(): Promise<void>;
  loops: string[];
}

/** VDISKFS_TEST_TRANSPORT=fuse-native runs the mounting tests on the fuse-native transport instead of the default. */
export const TEST_TRANSPORT = process.env.VDISKFS_TEST_TRANSPORT;

export async function mount(images: string, mnt: string, args: string[] = []): Promise<Mounted> {
  try {
    fs.mkdirSync(mnt, { recursive: true });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOTCONN' && code !== 'ECONNABORTED') throw e; // a dead mount there: the mount clears it
  }
  const transport = TEST_TRANSPORT && !args.includes('--transport') ? ['--transport', TEST_TRANSPORT] : [];
  const proc = spawn(process.execPath, [CLI, 'mount', '-f', ...transport, ...args, images, mnt], { stdio: ['ignore', 'pipe', 'pipe'] });
  trackPid(proc.pid);
  let err = '';
  proc.stderr.on('data', (d) => (err += d));
  proc.stdout.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((res) => proc.once('exit', (code) => res(code)));
  const deadline = Date.now() + 15_000;
  while (!isMounted(mnt)) {
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`mount failed: ${err}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const m: Mounted = {
    mnt,
    proc,
    loops: [],
    stderr: () => err,
    async waitForLog(re: RegExp) {
      for (let i = 0; i < 100 && !re.test(err); i++) await new Promise((r) => setTimeout(r, 50));
      return err;
    },
    exited,
    async unmount() {
      execFileSync(process.execPath, [CLI, 'unmount', mnt], { stdio: 'pipe' });
      return exited;
    },
    async cleanup() {
      for (const l of m.loops) {
        try {
          execFileSync('losetup', ['-d', l], { stdio: 'ignore' });
        } catch {
          /* gone */
        }
      }
      if (isMounted(mnt)) {
        try {
          execFileSync('umount', ['-l', mnt], { stdio: 'ignore' });
        } catch {
          /* already */
        }
      }
      const timer = setTimeout(() => proc.kill('SIGKILL'), 20_000);
      if (proc.exitCode === null) proc.kill('SIGTERM');
      await exited;
      clearTimeout(timer);
    },
  };
  return m;
}

export interface MountFixture {
  /** This test's temp folder, with `images/` and `mnt/` in it. */
  dir: string;
  images: string;
  mnt: string;
  /** Mounts `images` on `mnt` (foreground child); cleaned up after the test. */
  mount(args?: string[]): Promise<Mounted>;
}

/**
 * Registers per-test hooks: a fresh temp folder before each test; after it (also when it
 * failed) every mount made through the fixture is cleaned up and the folder removed.
 */
export function mountFixture(): MountFixture {
  let folder: { path: string; cleanup(): Promise<void> } | undefined;
  let mounts: Mounted[] = [];
  const f: MountFixture = {
    dir: '',
    images: '',
    mnt: '',
    async mount(args: string[] = []) {
      const m = await mount(f.images, f.mnt, args);
      mounts.push(m);
      return m;
    },
  };
  beforeEach(async () => {
    folder = await tempDir();
    f.dir = folder.path;
    f.images = path.join(folder.path, 'images');
    f.mnt = path.join(folder.path, 'mnt');
    fs.mkdirSync(f.images);
    fs.mkdirSync(f.mnt);
  });
  afterEach(async () => {
    for (const m of mounts) await m.cleanup();
    mounts = [];
    if (isMounted(f.mnt)) {
      try {
        execFileSync('umount', ['-l', f.mnt], { stdio: 'ignore' });
      } catch {
        /* already gone */
      }
    }
    await folder?.cleanup();
  });
  return f;
}
