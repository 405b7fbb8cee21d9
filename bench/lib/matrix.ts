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
}

export interface Target {
  id: string;
  title: string;
  /** Makes the image and mounts it in `dir`. A throw marks the whole target not available. */
  setup(job: FioJob, dir: string): Promise<Prepared>;
}

export interface MatrixResult {
  samples: Samples;
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
  const result: MatrixResult = { samples: new Samples(), unavailable: new Map(), failed: new Map() };
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
            const res = await run('fio', args, { timeoutMs: budget });
            if (res.code !== 0) throw new Error(`fio exited ${res.code ?? res.signal}: ${lastLine(res.stderr || res.stdout)}`);
            const fio = parseFioJson(res.stdout);
            result.samples.add(job.id, target.id, fio.MBps);
            opts.log(`  [${r + 1}/${opts.repeat}] ${job.title} on ${target.title}: ${fio.MBps.toFixed(1)} MB/s`);
          } catch (e) {
            const why = (e as Error).message;
            result.failed.set(key, why);
            opts.log(`  ${job.title} on ${target.title}: failed: ${why}`);
          } finally {
            await prepared.stop();
          }
        } finally {
          await forgetDir();
        }
      }
    }
  }
  return result;
}
