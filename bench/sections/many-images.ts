/**
 * A folder of 10,000 images (#20): copies of one empty 1 GiB qcow2, mounted in the background as
 * a user would (`vdiskfs mount images mnt`). Measured per round, each a whole process: the mount
 * returning, the first and second `ls -l` of the mount, the daemon's peak and final RSS
 * (/proc/PID/status), and `head -c1` of every view beside the same loop on the host files (the
 * loop's own cost is mostly process start-up; the difference is ours per image).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readPid } from '../../src/cli/pidfile';
import { vdiskfsArgs } from '../lib/paths';
import { run, runOk } from '../lib/procs';
import { forceUnmount } from '../lib/mounts';
import { Samples, markdownTable } from '../lib/stats';
import { checkAborted, onCleanup } from '../lib/cleanup';
import { removeDir } from '../lib/matrix';
import type { SectionContext, SectionReport } from './context';

const MiB = 2 ** 20;

/** The targets, each a whole process measured by the wall clock. */
export const MANY_TARGETS = {
  mountSeconds: 2,
  firstListSeconds: 2,
  secondListSeconds: 0.5,
  peakRss: 200 * 1e6,
  perImageOpenMs: 2,
};

async function timed(cmd: string, args: string[]): Promise<number> {
  const t0 = process.hrtime.bigint();
  await runOk(cmd, args, { timeoutMs: 900_000 });
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function rssOf(pid: number): { peak: number; now: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { peak: kb('VmHWM'), now: kb('VmRSS') };
}

export async function manyImagesSection(ctx: SectionContext): Promise<SectionReport> {
  const count = ctx.cfg.quick ? 1000 : 10_000;
  const repeat = Math.min(ctx.cfg.benchRepeat, ctx.cfg.quick ? 1 : 3);
  ctx.log(`## a folder of ${count} images`);
  const dir = fs.mkdtempSync(path.join(ctx.workRoot, 'many-'));
  const images = path.join(dir, 'images');
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(images);
  fs.mkdirSync(mnt);
  const forgetDir = onCleanup(`folder ${dir}`, () => {
    forceUnmount(mnt);
    removeDir(dir);
  });
  try {
    const one = path.join(dir, 'one.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', one, '1G']);
    for (let i = 1; i <= count; i++) fs.copyFileSync(one, path.join(images, `disk${i}.qcow2`));
    const samples = new Samples();
    const loop = (folder: string, glob: string) => [
      '-c',
      `cd ${JSON.stringify(folder)} && for f in ${glob}; do head -c1 "$f" >/dev/null; done`,
    ];
    for (let r = 0; r < repeat; r++) {
      checkAborted();
      const mountS = await timed(process.execPath, vdiskfsArgs(ctx.nodeArgs, 'mount', images, mnt));
      const forgetMount = onCleanup(`mount ${mnt}`, () => forceUnmount(mnt));
      try {
        const pid = readPid(mnt);
        if (!pid) throw new Error(`no daemon pid for ${mnt}`);
        const ls1 = await timed('bash', ['-c', `ls -l ${JSON.stringify(mnt)} >/dev/null`]);
        const ls2 = await timed('bash', ['-c', `ls -l ${JSON.stringify(mnt)} >/dev/null`]);
        const afterList = rssOf(pid);
        // Interleaved: host files first on even rounds, views first on odd ones.
        const order = r % 2 === 0 ? (['host', 'view'] as const) : (['view', 'host'] as const);
        const loops: Record<string, number> = {};
        for (const o of order) loops[o] = await timed('bash', o === 'host' ? loop(images, '*.qcow2') : loop(mnt, '*.qcow2.raw'));
        const end = rssOf(pid);
        samples.add('mount', 'ours', mountS);
        samples.add('ls1', 'ours', ls1);
        samples.add('ls2', 'ours', ls2);
        samples.add('peak', 'ours', Math.max(afterList.peak, end.peak));
        samples.add('after', 'ours', end.now);
        samples.add('perImage', 'ours', ((loops['view']! - loops['host']!) / count) * 1000);
        samples.add('loopHost', 'ours', loops['host']!);
        samples.add('loopView', 'ours', loops['view']!);
        ctx.log(
          `  [${r + 1}/${repeat}] mount ${mountS.toFixed(2)} s, ls -l ${ls1.toFixed(2)} / ${ls2.toFixed(2)} s, ` +
            `RSS peak ${(Math.max(afterList.peak, end.peak) / MiB).toFixed(0)} MiB, head -c1 loop ${loops['view']!.toFixed(1)} s vs ${loops['host']!.toFixed(1)} s on the host files`,
        );
      } finally {
        await run(process.execPath, vdiskfsArgs([], 'unmount', mnt), { timeoutMs: 120_000 });
        forceUnmount(mnt);
        await forgetMount();
      }
    }
    ctx.record('many-images', { count, samples: samples.toJSON() });
    const m = (k: string) => samples.median(k, 'ours');
    const t = MANY_TARGETS;
    const verdict = (ok: boolean) => (ok ? 'met' : 'MISSED');
    const rows = [
      ['background `vdiskfs mount` returns', `${m('mount').toFixed(2)} s`, `≤ ${t.mountSeconds} s`, verdict(m('mount') <= t.mountSeconds)],
      ['first `ls -l` of the mount', `${m('ls1').toFixed(2)} s`, `≤ ${t.firstListSeconds} s`, verdict(m('ls1') <= t.firstListSeconds)],
      [
        'second `ls -l` (nothing changed)',
        `${m('ls2').toFixed(2)} s`,
        `≤ ${t.secondListSeconds} s`,
        verdict(m('ls2') <= t.secondListSeconds),
      ],
      ['daemon RSS, peak', `${(m('peak') / 1e6).toFixed(0)} MB`, `≤ ${t.peakRss / 1e6} MB`, verdict(m('peak') <= t.peakRss)],
      ['daemon RSS, at the end', `${(m('after') / 1e6).toFixed(0)} MB`, '', ''],
      [
        '`head -c1` of every view, minus the same loop on the host files',
        `${m('perImage').toFixed(2)} ms per image (${m('loopView').toFixed(1)} s vs ${m('loopHost').toFixed(1)} s)`,
        `≤ ${t.perImageOpenMs} ms`,
        verdict(m('perImage') <= t.perImageOpenMs),
      ],
    ];
    return [
      '## A folder of many images',
      '',
      `### ${count} copies of an empty 1 GiB qcow2, background mount (median of ${repeat}; whole processes, wall clock)`,
      '',
      markdownTable(['what', 'vdiskfs', 'target', ''], rows, ['l', 'r', 'l', 'l']),
      '',
    ].join('\n');
  } finally {
    await forgetDir();
  }
}
