/**
 * The mount daemon's V8 heap flags, and how the daemon gets them.
 *
 * The flags keep the daemon's memory near what it holds: a young generation of at most 4 MiB per
 * semi-space (Node's default is 16) and an old generation collected once it has grown by 30%
 * (V8's default lets it grow several-fold first). The daemon's garbage is small and short-lived;
 * with the defaults, listing and opening a folder of 10,000 images peaked at 200-216 MB of RSS,
 * with these at about 125 MB, and fio on a qcow2 view is no slower.
 *
 * They are not on the CLI's first line because any V8 flag makes V8 reject the code cache Node
 * ships for its own modules: every short command (map, check, info) then compiled them again,
 * 15-20 ms of a 0.2 s `map`. Only the process that serves a mount needs them: a background
 * mount spawns its daemon with them, and `mount --foreground` re-executes itself with them (same
 * PID, same descriptors) before it does anything else.
 */
import createDebug from 'debug';

const debug = createDebug('vdiskfs:cli');

export const DAEMON_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4', '--heap-growing-percent=30'];

/** The daemon flags `execArgv` lacks (by name: a flag the user gave with another value stays theirs). */
export function missingDaemonFlags(execArgv: readonly string[]): string[] {
  const name = (f: string) => f.split('=')[0];
  return DAEMON_NODE_FLAGS.filter((f) => !execArgv.some((a) => name(a) === name(f)));
}

/**
 * Whether these command-line words (after `mount`) ask to serve in this process: `-f`,
 * `--foreground`, or `-f` among clustered short flags (`-rf`). Read before yargs, because the
 * re-execution must come before stdio is touched; a spelling this misses only costs memory.
 */
export function servesInForeground(args: readonly string[]): boolean {
  return args.some((a) => a === '--foreground' || a === '--foreground=true' || /^-r*fr*$/.test(a));
}

/**
 * Runs this CLI again, in this process, with the daemon flags, when they are missing. Called
 * first thing by main for `mount --foreground`, before stdio or any image is touched. When exec fails (no
 * koffi) the mount goes on with Node's default heap: more memory, same behaviour.
 */
export function reexecWithDaemonFlags(): void {
  const missing = missingDaemonFlags(process.execArgv);
  if (missing.length === 0) return;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- koffi only on this path
    const { execve } = require('../io/syscalls') as typeof import('../io/syscalls');
    execve(process.execPath, [process.argv0, ...missing, ...process.execArgv, ...process.argv.slice(1)], process.env);
  } catch (e) {
    debug(`running without the daemon's heap flags: ${(e as Error).message}`);
  }
}
