/**
 * `check` and `map --output=json` at scale: qcow2 images of 256 GiB and 2 TiB with preallocated
 * metadata (4 Mi and 32 Mi host clusters), and a monolithicSparse VMDK of 2047 GiB with every
 * grain allocated (32 Mi grains; bench/lib/populated-vmdk.ts), vdiskfs beside qemu-img on the
 * same file, each a whole process measured by /usr/bin/time (wall seconds and peak RSS),
 * interleaved. Targets (#20): at most 2x qemu-img's time, peak memory at most 2x qemu-img's plus
 * 64 MiB.
 */
import * as path from 'node:path';
import { vdiskfsArgs } from '../lib/paths';
import { lastLine, run, runOk } from '../lib/procs';
import { Samples, formatRatio, formatSeconds, markdownTable, ratio } from '../lib/stats';
import { checkAborted } from '../lib/cleanup';
import { populateGrainTables } from '../lib/populated-vmdk';
import type { SectionContext } from './context';

const MiB = 2 ** 20;
export const SCALE_TIME_TARGET = 2;
export const SCALE_MEMORY_SLACK = 64 * MiB;

/** Runs one command under /usr/bin/time: its wall seconds and peak resident bytes. */
async function measured(cmd: string, args: string[]): Promise<{ seconds: number; peak: number }> {
  const r = await run('/usr/bin/time', ['-f', 'vdiskfs-bench-time %e %M', cmd, ...args], { timeoutMs: 900_000 });
  const m = /vdiskfs-bench-time ([\d.]+) (\d+)/.exec(r.stderr);
  if (r.code !== 0 || !m) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code ?? r.signal}: ${lastLine(r.stderr || r.stdout)}`);
  return { seconds: Number(m[1]), peak: Number(m[2]) * 1024 };
}

export async function checkScale(ctx: SectionContext, dir: string): Promise<string[]> {
  const out: string[] = [];
  const rows: string[][] = [];
  const samples = new Samples();
  const repeat = Math.min(ctx.cfg.benchRepeat, ctx.cfg.quick ? 1 : 3);
  const images = [
    { size: '256G', format: 'qcow2' },
    ...(ctx.cfg.quick ? [] : [{ size: '2T', format: 'qcow2' }]),
    { size: ctx.cfg.quick ? '256G' : '2047G', format: 'vmdk' },
  ];
  for (const { size, format } of images) {
    const file = path.join(dir, `${format === 'vmdk' ? 'populated' : 'prealloc'}-${size}.${format}`);
    if (format === 'qcow2')
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', file, size], { timeoutMs: 900_000 });
    else {
      await runOk('qemu-img', ['create', '-q', '-f', 'vmdk', file, size]);
      populateGrainTables(file);
    }
    for (const cmd of ['check', 'map'] as const) {
      const extra = cmd === 'map' ? ['--output=json'] : [];
      const variants = [
        { id: 'qemu', cmd: 'qemu-img', args: [cmd, ...extra, file] },
        { id: 'ours', cmd: process.execPath, args: vdiskfsArgs(ctx.nodeArgs, cmd, ...extra, file) },
      ];
      for (let r = 0; r < repeat; r++) {
        for (const v of r % 2 === 0 ? variants : [...variants].reverse()) {
          checkAborted();
          const m = await measured(v.cmd, v.args);
          samples.add(`${format} ${size} ${cmd} s`, v.id, m.seconds);
          samples.add(`${format} ${size} ${cmd} peak`, v.id, m.peak);
          ctx.log(
            `  [${r + 1}/${repeat}] ${format} ${size} ${cmd} ${v.id}: ${m.seconds.toFixed(2)} s, ${(m.peak / MiB).toFixed(0)} MiB peak`,
          );
        }
      }
      const qs = samples.median(`${format} ${size} ${cmd} s`, 'qemu');
      const os = samples.median(`${format} ${size} ${cmd} s`, 'ours');
      const qp = samples.median(`${format} ${size} ${cmd} peak`, 'qemu');
      const op = samples.median(`${format} ${size} ${cmd} peak`, 'ours');
      const t = ratio(os, qs);
      const memLimit = 2 * qp + SCALE_MEMORY_SLACK;
      rows.push([
        `${format} ${size} \`${cmd}${extra.length ? ' ' + extra.join(' ') : ''}\``,
        `${formatSeconds(qs)} / ${(qp / MiB).toFixed(0)} MiB`,
        `${formatSeconds(os)} / ${(op / MiB).toFixed(0)} MiB`,
        `${formatRatio(t)}: ${t <= SCALE_TIME_TARGET ? 'met' : 'MISSED'}`,
        `${(op / MiB).toFixed(0)} ≤ ${(memLimit / MiB).toFixed(0)} MiB: ${op <= memLimit ? 'met' : 'MISSED'}`,
      ]);
    }
  }
  ctx.record('check-scale', samples.toJSON());
  out.push(
    `### \`check\` and \`map\` of metadata-preallocated qcow2 and fully allocated VMDK images (median of ${repeat}, interleaved; whole process, /usr/bin/time)`,
    '',
    markdownTable(
      ['image, command', 'qemu-img (s / peak)', 'vdiskfs (s / peak)', `time ≤ ${SCALE_TIME_TARGET}x`, 'peak ≤ 2x qemu-img + 64 MiB'],
      rows,
      ['l', 'r', 'r', 'l', 'l'],
    ),
    '',
  );
  return out;
}
