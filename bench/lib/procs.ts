/** Child processes of the harness: one-shot commands and long-running daemons, all tracked for cleanup. */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { onCleanup } from './cleanup';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; killed (and reported) after `timeoutMs`. */
export function run(cmd: string, args: readonly string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const forget = onCleanup(`${cmd} (pid ${child.pid})`, () => killAndWait(child, 5000));
    const timer = opts.timeoutMs
      ? setTimeout(() => {
          stderr += `\n[killed after ${opts.timeoutMs} ms]`;
          child.kill('SIGKILL');
        }, opts.timeoutMs)
      : undefined;
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      void forget();
      reject(new Error(`cannot run ${cmd}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      void forget();
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Like `run`, but a non-zero exit is an error carrying the last stderr line. */
export async function runOk(cmd: string, args: readonly string[], opts: { timeoutMs?: number } = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code ?? r.signal}: ${lastLine(r.stderr || r.stdout)}`);
  return r;
}

export function lastLine(text: string): string {
  const lines = text
    .trim()
    .split('\n')
    .filter((l) => l.trim() !== '');
  return lines[lines.length - 1] ?? '';
}

/** The first line of a command's output, or undefined when it cannot run. */
export function firstLineOf(cmd: string, args: readonly string[]): string | undefined {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0 || typeof r.stdout !== 'string') return undefined;
  return r.stdout.trim().split('\n')[0];
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the child has exited. */
export function killAndWait(child: ChildProcess, graceMs: number): Promise<void> {
  if (exited(child)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    child.once('exit', done);
    const timer = setTimeout(() => {
      if (!exited(child)) child.kill('SIGKILL');
    }, graceMs);
    child.kill('SIGTERM');
  });
}

export interface Daemon {
  child: ChildProcess;
  /** Everything it printed so far (for error messages). */
  output(): string;
  /** SIGTERM and wait for a clean exit (SIGKILL after `graceMs`); returns the exit code. */
  stop(graceMs?: number): Promise<number | null>;
}

/** Starts a long-running process in its own process group (Ctrl-C reaches the harness, which stops it in order). */
export function startDaemon(cmd: string, args: readonly string[], env?: NodeJS.ProcessEnv): Daemon {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: env ?? process.env });
  let out = '';
  const keep = (d: Buffer) => {
    out += d.toString();
    if (out.length > 64 * 1024) out = out.slice(-32 * 1024);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  child.on('error', (e) => keep(Buffer.from(`cannot run ${cmd}: ${e.message}\n`)));
  const forget = onCleanup(`${cmd} (pid ${child.pid})`, () => killAndWait(child, 10_000));
  return {
    child,
    output: () => out,
    stop: async (graceMs = 60_000) => {
      await killAndWait(child, graceMs);
      await forget();
      return child.exitCode;
    },
  };
}
