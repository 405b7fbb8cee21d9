/**
 * VMDK: the seed's own command (`qemu-img bench -w -c 1024 -s 128K -d 1 -t none -f vmdk`) on
 * both sides, multi-grain allocation on and off, and fio through the mounts.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { FioJob } from '../lib/fio';
import { parseBenchSeconds } from '../lib/fio';
import { createEmpty } from '../lib/images';
import { BENCH_CLI, VDISKFS_MAIN } from '../lib/paths';
import { lastLine, run } from '../lib/procs';
import { Samples, formatRatio, formatSeconds, markdownTable, ratio, verdict } from '../lib/stats';
import { checkAborted, onCleanup } from '../lib/cleanup';
import { removeDir } from '../lib/matrix';
import type { SectionContext, SectionReport } from './context';
import { driverAvailable, peerFio } from './peer';

export function vmdkGoal(job: FioJob): number {
  return job.writes ? 2.0 : 1.0;
}

/** `vdiskfs bench` through the real CLI when it registers the command, else the command on its own. */
export function vdiskfsBenchArgv(): string[] {
  const r = spawnSync(process.execPath, [VDISKFS_MAIN, 'bench', '--help'], { stdio: 'ignore' });
  return r.status === 0 ? [VDISKFS_MAIN, 'bench'] : [BENCH_CLI, 'bench'];
}

interface Variant {
  id: string;
  title: string;
  cmd: string;
  args: (file: string) => string[];
}

export async function vmdkSection(ctx: SectionContext): Promise<SectionReport> {
  const out: string[] = ['## VMDK', ''];
  ctx.log('## VMDK');
  const why = await driverAvailable('vmdk', ctx.workRoot, ctx.cfg.imageSize);
  if (why) {
    ctx.log(`  not available: ${why}`);
    return [...out, `not available: ${why}`].join('\n');
  }

  const benchArgs = ['-w', '-c', String(ctx.cfg.benchCount), '-s', '128K', '-d', '1', '-t', 'none', '-f', 'vmdk'];
  const ours = vdiskfsBenchArgv();
  const variants: Variant[] = [
    { id: 'qemu', title: 'qemu-img bench', cmd: 'qemu-img', args: (f) => ['bench', ...benchArgs, f] },
    { id: 'ours', title: 'vdiskfs bench', cmd: process.execPath, args: (f) => [...ours, ...benchArgs, f] },
    { id: 'single', title: 'vdiskfs bench --no-multi-alloc', cmd: process.execPath, args: (f) => [...ours, ...benchArgs, '--no-multi-alloc', f] },
  ];
  const samples = new Samples();
  const problems: string[] = [];
  const repeat = ctx.cfg.benchRepeat;
  for (let r = 0; r < repeat; r++) {
    const order = r % 2 === 0 ? variants : [...variants].reverse();
    for (const v of order) {
      checkAborted();
      const dir = fs.mkdtempSync(path.join(ctx.workRoot, `vmdk-bench-${v.id}-`));
      const forget = onCleanup(`folder ${dir}`, () => removeDir(dir));
      try {
        const file = path.join(dir, 'test.vmdk');
        await createEmpty(file, 'vmdk', ctx.cfg.imageSize);
        await run('sync', []); // no writeback of an earlier run inside this one
        const res = await run(v.cmd, v.args(file), { timeoutMs: 600_000 });
        if (res.code !== 0) throw new Error(`exited ${res.code ?? res.signal}: ${lastLine(res.stderr || res.stdout)}`);
        const secs = parseBenchSeconds(res.stdout);
        // Our result counts only if QEMU agrees the image is sound afterwards.
        const check = await run('qemu-img', ['check', '-q', '-f', 'vmdk', file]);
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
  ctx.record('vmdk-bench', { seconds: samples.toJSON(), problems });
  const secs = (id: string) => samples.median('bench', id);
  const mib = (id: string) => {
    const b = samples.median('allocated', id);
    return Number.isFinite(b) ? `${(b / 2 ** 20).toFixed(1)} MiB` : 'n/a';
  };
  const speedup = ratio(secs('qemu'), secs('ours'));
  const multiGain = ratio(secs('single'), secs('ours'));
  out.push(
    `### \`bench ${benchArgs.join(' ')} test.vmdk\` on a fresh \`qemu-img create -f vmdk test.vmdk 1G\` (median of ${repeat}, the three commands interleaved)`,
    '',
    markdownTable(
      ['command', 'seconds', 'speed-up over qemu-img', 'target', 'image allocated'],
      [
        ['qemu-img bench', formatSeconds(secs('qemu')), '1.00x', '', mib('qemu')],
        ['vdiskfs bench', formatSeconds(secs('ours')), formatRatio(speedup), verdict(speedup, 3), mib('ours')],
        ['vdiskfs bench --no-multi-alloc', formatSeconds(secs('single')), formatRatio(ratio(secs('qemu'), secs('single'))), '', mib('single')],
        ['multi-grain allocation gain (--no-multi-alloc / default)', '', formatRatio(multiGain), verdict(multiGain, 1.29), ''],
      ],
      ['l', 'r', 'r', 'l', 'r'],
    ),
    '',
    '`-t none`: QEMU bypasses the host page cache (O_DIRECT); vdiskfs cannot, so its final flush (metadata + fdatasync) is inside the timed run. Every image passes `qemu-img check` afterwards.',
    ...problems.map((p) => `- ${p}`),
    '',
  );

  ctx.log('## VMDK: vdiskfs vs qemu-storage-daemon');
  const { table } = await peerFio(ctx, 'vmdk', vmdkGoal);
  out.push(
    '### fio: vdiskfs vs qemu-storage-daemon (MB/s, median)',
    '',
    'Fresh `qemu-img create -f vmdk X 1G` per job and repeat (read jobs: the same `qemu-img convert`-filled image for both). The do-nothing mount (`--null-driver`, same run) is the ceiling of our FUSE stack: where *ceiling / peer* is below a target, no driver can reach it through this FUSE stack. Targets: writes ≥ 2.0, reads ≥ 1.0.',
    '',
    table,
  );
  return out.join('\n');
}
