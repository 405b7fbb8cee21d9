/** Where things are, whether this runs compiled (dist/bench/lib) or from source (bench/lib, vitest). */
import * as fs from 'node:fs';
import * as path from 'node:path';

function findRepoRoot(from: string): string {
  let dir = from;
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'tsconfig.json'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`cannot find the repository root above ${from}`);
    dir = up;
  }
}

export const REPO_ROOT = findRepoRoot(__dirname);
/** The built CLI (`npx tsc -p .` puts it there). */
export const VDISKFS_MAIN = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');
/** Fallback when the CLI entry does not register `bench` (yet): the command on its own. */
export const BENCH_CLI = path.join(REPO_ROOT, 'dist', 'bench', 'lib', 'bench-cli.js');
export const RESULTS_DIR = path.join(REPO_ROOT, 'bench', 'results');

/**
 * The node flags of the CLI's first line (`#!/usr/bin/env -S node <flags>`, when it has any):
 * every `vdiskfs` a user runs gets them, so the bench runs the CLI with them too. (`mount` adds
 * its daemon's own: src/cli/daemon-heap.ts.)
 */
export const VDISKFS_NODE_FLAGS: readonly string[] = (() => {
  try {
    const first = fs.readFileSync(VDISKFS_MAIN, 'utf8').split('\n', 1)[0] ?? '';
    const m = /^#!\/usr\/bin\/env -S node(.*)$/.exec(first);
    return m ? m[1]!.trim().split(/\s+/).filter(Boolean) : [];
  } catch {
    return [];
  }
})();

/** node's arguments to run the CLI as its first line does: flags, extra node flags (profiling), the script, `args`. */
export function vdiskfsArgs(nodeArgs: readonly string[], ...args: string[]): string[] {
  return [...VDISKFS_NODE_FLAGS, ...nodeArgs, VDISKFS_MAIN, ...args];
}
