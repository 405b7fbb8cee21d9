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
