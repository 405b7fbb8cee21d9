/**
 * Processes this test run started, by PID, so the global teardown can end the ones a failed test
 * left behind — and only those (never a pattern match: other runs and users share the machine).
 * The registry is a file per run; test workers are separate processes, so they append to it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export function registryFile(runId: string): string {
  return path.join(os.tmpdir(), `vdiskfs-test-${runId}.pids`);
}

/** Remembers a process this run started (no-op outside a vitest run). */
export function trackPid(pid: number | undefined): void {
  const run = process.env.VDISKFS_TEST_RUN;
  if (!run || !pid) return;
  fs.appendFileSync(registryFile(run), `${pid} ${startTimeOf(pid) ?? ''}\n`);
}

/** The process's start time (field 22 of /proc/PID/stat): a recycled PID has another. */
export function startTimeOf(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Kills (SIGKILL) every registered process that is still the one we started; removes the registry. */
export function killTracked(runId: string): number {
  const file = registryFile(runId);
  let killed = 0;
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return 0;
  }
  for (const line of text.split('\n')) {
    const [pidText, started] = line.split(' ');
    const pid = Number(pidText);
    if (!Number.isInteger(pid) || pid <= 0) continue;
    if (started && startTimeOf(pid) !== started) continue; // exited, or the PID was reused
    try {
      process.kill(pid, 'SIGKILL');
      killed++;
    } catch {
      /* already gone */
    }
  }
  fs.rmSync(file, { force: true });
  return killed;
}
