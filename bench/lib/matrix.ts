/**
 * Runs fio jobs against several targets, interleaved: repeat → job → target, the target order
 * reversed on every other repeat so slow drift (page cache, disk) hits every target alike.
 * Every run gets a fresh folder (fresh image) that is removed afterwards.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkAborted, onCleanup } from './cleanup';
import { fioArgs, parseFioJson } from './fio';
import type { FioJob, JobSettings } from './fio';
import { run, lastLine } from './procs';
import { Samples } from './stats';

export interface Prepared {
  /** The file fio works on. */
  file: string;
  /** Unmounts / stops servers; called after fio, also when fio failed. */
  stop(): Promise<void>;
  /** The FUSE server's process: its CPU time per request is measured. */
  pid?: number;
  /** After stop(): the request sizes the transport saw (our mount's --stats), one line. */
  requestSizes?(): string | undefined;
}

/** utime + stime of a process in clock ticks (/proc/PID/stat fields 14 and 15); undefined once it is gone. */
export function cpuTicks(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]);
  } catch {
    return undefined;
  }
}
/** Clock ticks per second (USER_HZ): 100 on Linux. */
const TICKS_PER_SECOND = 100;

export interface Target {
  id: string;
  title: string;
  /** Makes the image and mounts it in `dir`. A throw marks the whole target not available. */
  setup(job: FioJob, dir: string): Promise<Prepared>;
}

export interface MatrixResult {
  samples: Samples;
  /** Server CPU µs per fio request, by (job, target). */
  cpu: Samples;
  /** "job/target" → the request sizes the transport saw (last run). */
  requestSizes: Map<string, string>;
  /** target id → why it could not be set up. */
  unavailable: Map<string, string>;
  /** "job/target" → why fio failed there. */
  failed: Map<string, string>;
}

export function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

export async function runFioMatrix(opts: {
  name: string;
  jobs: readonly FioJob[];
  targets: readonly Target[];
  repeat: number;
  settings: JobSettings;
  workRoot: string;
  log: (line: string) => void;
}): Promise<MatrixResult> {
  const result: MatrixResult = {
    samples: new Samples(),
    cpu: new Samples(),
    requestSizes: new Map(),
    unavailable: new Map(),
    failed: new Map(),
  };
  for (let r = 0; r < opts.repeat; r++) {
    for (const job of opts.jobs) {
      const order = r % 2 === 0 ? opts.targets : [...opts.targets].reverse();
      for (const target of order) {
        const key = `${job.id}/${target.id}`;
        if (result.unavailable.has(target.id) || result.failed.has(key)) continue;
        checkAborted();
        const dir = fs.mkdtempSync(path.join(opts.workRoot, `${opts.name}-${target.id}-`));
        const forgetDir = onCleanup(`folder ${dir}`, () => removeDir(dir));
        try {
          let prepared: Prepared;
          try {
            prepared = await target.setup(job, dir);
          } catch (e) {
            const why = (e as Error).message;
            result.unavailable.set(target.id, why);
            opts.log(`  ${target.title}: not available: ${why}`);
            continue;
          }
          try {
            // The previous run's dirty pages are written back now, not during this run's fsync.
            await run('sync', []);
            const args = fioArgs(job, prepared.file, opts.settings);
            const budget = (job.args.includes('--time_based') ? opts.settings.runtime : opts.settings.maxRuntime) * 1000 + 120_000;
            const cpu0 = prepared.pid ? cpuTicks(prepared.pid) : undefined;
            const res = await run('fio', args, { timeoutMs: budget });
            const cpu1 = prepared.pid ? cpuTicks(prepared.pid) : undefined;
            if (res.code !== 0) throw new Error(`fio exited ${res.code ?? res.signal}: ${lastLine(res.stderr || res.stdout)}`);
            const fio = parseFioJson(res.stdout);
            result.samples.add(job.id, target.id, fio.MBps);
            let cpuNote = '';
            if (cpu0 !== undefined && cpu1 !== undefined && fio.ios > 0) {
              const us = (((cpu1 - cpu0) / TICKS_PER_SECOND) * 1e6) / fio.ios;
              result.cpu.add(job.id, target.id, us);
              cpuNote = `, server ${us.toFixed(1)} µs CPU per request`;
            }
            opts.log(`  [${r + 1}/${opts.repeat}] ${job.title} on ${target.title}: ${fio.MBps.toFixed(1)} MB/s${cpuNote}`);
          } catch (e) {
            const why = (e as Error).message;
            result.failed.set(key, why);
            opts.log(`  ${job.title} on ${target.title}: failed: ${why}`);
          } finally {
            await prepared.stop();
            const sizes = prepared.requestSizes?.();
            if (sizes) result.requestSizes.set(key, sizes);
          }
        } finally {
          await forgetDir();
        }
      }
    }
  }
  return result;
}
