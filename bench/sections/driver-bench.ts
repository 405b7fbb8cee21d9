/**
 * `vdiskfs bench` against `qemu-img bench` with the same arguments on fresh images, commands
 * interleaved (the order reversed every other repeat): the drivers alone, no FUSE. Shared by the
 * qcow2 and VMDK sections. Each run counts only if `qemu-img check` calls the image sound after it.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseBenchSeconds } from '../lib/fio';
import { createEmpty } from '../lib/images';
import { BENCH_CLI, VDISKFS_MAIN } from '../lib/paths';
import { lastLine, run } from '../lib/procs';
import { Samples } from '../lib/stats';
import { checkAborted, onCleanup } from '../lib/cleanup';
import { removeDir } from '../lib/matrix';
import type { SectionContext } from './context';

export interface BenchVariant {
  id: string;
  title: string;
  cmd: string;
  args: (file: string) => string[];
}

/** `vdiskfs bench` through the real CLI when it registers the command, else the command on its own. */
export function vdiskfsBenchArgv(): string[] {
  const r = spawnSync(process.execPath, [VDISKFS_MAIN, 'bench', '--help'], { stdio: 'ignore' });
  return r.status === 0 ? [VDISKFS_MAIN, 'bench'] : [BENCH_CLI, 'bench'];
}

/** The seed's command line: 1024 (or BENCH_COUNT) sequential 128 KiB writes, one in flight, no host cache. */
export function benchArgs(ctx: SectionContext, format: 'qcow2' | 'vmdk'): string[] {
  return ['-w', '-c', String(ctx.cfg.benchCount), '-s', '128K', '-d', '1', '-t', 'none', '-f', format];
}

/** qemu-img bench and vdiskfs bench with `args`, plus any extra variants of ours. */
export function standardVariants(args: string[], extra: Array<{ id: string; flags: string[] }> = []): BenchVariant[] {
  const ours = vdiskfsBenchArgv();
  return [
    { id: 'qemu', title: 'qemu-img bench', cmd: 'qemu-img', args: (f) => ['bench', ...args, f] },
    { id: 'ours', title: 'vdiskfs bench', cmd: process.execPath, args: (f) => [...ours, ...args, f] },
    ...extra.map((x) => ({
      id: x.id,
      title: `vdiskfs bench ${x.flags.join(' ')}`,
      cmd: process.execPath,
      args: (f: string) => [...ours, ...args, ...x.flags, f],
    })),
  ];
}

/** Runs every variant `ctx.cfg.benchRepeat` times; samples 'bench' (seconds) and 'allocated' (bytes) per variant id. */
export async function runDriverBench(
  ctx: SectionContext,
  format: 'qcow2' | 'vmdk',
  variants: BenchVariant[],
): Promise<{ samples: Samples; problems: string[] }> {
  const samples = new Samples();
  const problems: string[] = [];
  const repeat = ctx.cfg.benchRepeat;
  for (let r = 0; r < repeat; r++) {
    const order = r % 2 === 0 ? variants : [...variants].reverse();
    for (const v of order) {
      checkAborted();
      const dir = fs.mkdtempSync(path.join(ctx.workRoot, `${format}-bench-${v.id}-`));
      const forget = onCleanup(`folder ${dir}`, () => removeDir(dir));
      try {
        const file = path.join(dir, `test.${format}`);
        await createEmpty(file, format, ctx.cfg.imageSize);
        await run('sync', []); // no writeback of an earlier run inside this one
        const res = await run(v.cmd, v.args(file), { timeoutMs: 600_000 });
        if (res.code !== 0) throw new Error(`exited ${res.code ?? res.signal}: ${lastLine(res.stderr || res.stdout)}`);
        const secs = parseBenchSeconds(res.stdout);
        const check = await run('qemu-img', ['check', '-q', '-f', format, file]);
        if (check.code !== 0) throw new Error(`qemu-img check after the run failed: ${lastLine(check.stderr || check.stdout)}`);
        samples.add('bench', v.id, secs);
        // Same data on disk on both sides? (A driver that skipped writing zeros would "win" unfairly.)
        samples.add('allocated', v.id, fs.statSync(file).blocks * 512);
        ctx.log(`  [${r + 1}/${repeat}] ${v.title}: ${secs.toFixed(3)} s`);
      } catch (e) {
        const msg = `${v.title}: ${(e as Error).message}`;
        problems.push(msg);
        ctx.log(`  ${msg}`);
      } finally {
        await forget();
      }
    }
  }
  return { samples, problems };
}

export function allocatedMiB(samples: Samples, id: string): string {
  const b = samples.median('allocated', id);
  return Number.isFinite(b) ? `${(b / 2 ** 20).toFixed(1)} MiB` : 'n/a';
}
