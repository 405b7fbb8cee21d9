/**
 * execve(2): this process becomes another program (Node has no process.execve before v23), keeping
 * its PID, its session and its stdio.
 */
import { fail, ffi } from './ffi';

const F_SETFD = 2;

/** Replaces this process with `file` run as `argv` (argv[0] included) in `env`; returns only by throwing. */
export function execve(file: string, argv: readonly string[], env: NodeJS.ProcessEnv): never {
  const f = ffi();
  const envp = Object.entries(env)
    .filter((kv): kv is [string, string] => kv[1] !== undefined)
    .map(([k, v]) => `${k}=${v}`);
  // Node marks stdin, stdout and stderr close-on-exec at start-up; left so, the new program would
  // find them closed and open /dev/null in their place, and every message would vanish. F_SETFD
  // changes this process's descriptor table only, not the terminal or pipe behind it.
  for (const fd of [0, 1, 2]) if (f.fcntl(fd, F_SETFD, 'int', 0) !== 0) fail(f, 'fcntl', `F_SETFD fd ${fd}`, { fd });
  f.execve(file, [...argv, null], [...envp, null]);
  return fail(f, 'execve', file, { file });
}
