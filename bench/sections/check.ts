/**
 * `check`: vdiskfs check against qemu-img check on the same 4 GiB qcow2 holding 512 MiB of data,
 * each a whole process run as a user would type it (so Node's start-up is part of our figure).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { vdiskfsArgs } from '../lib/paths';
import { lastLine, run } from '../lib/procs';
import { Samples, formatRatio, formatSeconds, markdownTable, ratio } from '../lib/stats';
import { checkAborted, onCleanup } from '../lib/cleanup';
import { removeDir } from '../lib/matrix';
import type { SectionContext, SectionReport } from './context';
import { checkScale } from './check-scale';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
/** Target: vdiskfs check takes at most this many times qemu-img check's wall time. */
export const CHECK_TARGET = 3;

export async function checkSection(ctx: SectionContext): Promise<SectionReport> {
  const out: string[] = ['## check', ''];
  ctx.log('## check');
  const dir = fs.mkdtempSync(path.join(ctx.workRoot, 'check-'));
  const forget = onCleanup(`folder ${dir}`, () => removeDir(dir));
  try {
    const file = path.join(dir, 'big.qcow2');
    const made = await run('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(4 * GiB)]);
    if (made.code !== 0) throw new Error(`qemu-img create: ${lastLine(made.stderr)}`);
    // 512 MiB in 16 MiB writes spread over the disk: several L2 tables, data clusters in runs.
    const writes: string[] = [];
    for (let i = 0; i < 32; i++) writes.push('-c', `write -P ${i + 1} ${i * 128 * MiB} ${16 * MiB}`);
    const filled = await run('qemu-io', ['-f', 'qcow2', ...writes, file], { timeoutMs: 600_000 });
    if (filled.code !== 0) throw new Error(`qemu-io: ${lastLine(filled.stderr || filled.stdout)}`);
    const variants = [
      { id: 'qemu', title: 'qemu-img check', cmd: 'qemu-img', args: ['check', file] },
      { id: 'ours', title: 'vdiskfs check', cmd: process.execPath, args: vdiskfsArgs(ctx.nodeArgs, 'check', file) },
    ];
    const samples = new Samples();
    const repeat = ctx.cfg.benchRepeat;
    for (let r = 0; r < repeat; r++) {
      for (const v of r % 2 === 0 ? variants : [...variants].reverse()) {
        checkAborted();
        const t0 = process.hrtime.bigint();
        const res = await run(v.cmd, v.args, { timeoutMs: 600_000 });
        const secs = Number(process.hrtime.bigint() - t0) / 1e9;
        if (res.code !== 0) throw new Error(`${v.title} exited ${res.code ?? res.signal}: ${lastLine(res.stderr || res.stdout)}`);
        samples.add('check', v.id, secs);
        ctx.log(`  [${r + 1}/${repeat}] ${v.title}: ${secs.toFixed(3)} s`);
      }
    }
    ctx.record('check', { seconds: samples.toJSON() });
    const q = samples.median('check', 'qemu');
    const o = samples.median('check', 'ours');
    const times = ratio(o, q);
    out.push(
      `### \`check\` of a 4 GiB qcow2 holding 512 MiB (median of ${repeat}, interleaved; whole process, start-up included)`,
      '',
      markdownTable(
        ['command', 'seconds', 'times qemu-img', 'target'],
        [
          ['qemu-img check', formatSeconds(q), '1.00x', ''],
          [
            'vdiskfs check',
            formatSeconds(o),
            formatRatio(times),
            Number.isFinite(times) ? `≤ ${CHECK_TARGET}: ${times <= CHECK_TARGET ? 'met' : 'MISSED'}` : `≤ ${CHECK_TARGET}: not measured`,
          ],
        ],
        ['l', 'r', 'r', 'l'],
      ),
      '',
      `Target: vdiskfs check ≤ ${CHECK_TARGET}x qemu-img check. Most of our time is Node starting and loading the CLI (\`node -e 0\` alone is tens of milliseconds); the refcount walk itself is a few milliseconds here.`,
      '',
    );
    out.push(...(await checkScale(ctx, dir)));
  } finally {
    await forget();
  }
  return out.join('\n');
}
