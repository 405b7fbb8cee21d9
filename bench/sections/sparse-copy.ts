/**
 * `sparse-copy`: `cp --sparse=always` of a 4 GiB qcow2 view holding 100 MiB against `qemu-img
 * convert -O raw` of the image itself. cp asks SEEK_DATA/SEEK_HOLE through FUSE and reads only
 * the data; before views answered them it read all 4 GiB (16x qemu-img).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { lastLine, run } from '../lib/procs';
import { Samples, formatRatio, formatSeconds, markdownTable, ratio } from '../lib/stats';
import { checkAborted, onCleanup } from '../lib/cleanup';
import { removeDir } from '../lib/matrix';
import { mountOurs } from '../lib/mounts';
import type { SectionContext, SectionReport } from './context';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
/** Target: cp --sparse=always of the view takes at most this many times qemu-img convert. */
export const SPARSE_COPY_TARGET = 3;

export async function sparseCopySection(ctx: SectionContext): Promise<SectionReport> {
  const out: string[] = ['## sparse-copy', ''];
  ctx.log('## sparse-copy');
  const dir = fs.mkdtempSync(path.join(ctx.workRoot, 'sparse-'));
  const forget = onCleanup(`folder ${dir}`, () => removeDir(dir));
  try {
    const images = path.join(dir, 'images');
    fs.mkdirSync(images);
    const file = path.join(images, 'sparse.qcow2');
    const made = await run('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(4 * GiB)]);
    if (made.code !== 0) throw new Error(`qemu-img create: ${lastLine(made.stderr)}`);
    // 100 MiB in 25 runs of 4 MiB spread over the disk: many data/hole boundaries.
    const writes: string[] = [];
    for (let i = 0; i < 25; i++) writes.push('-c', `write -P ${i + 1} ${i * 160 * MiB} ${4 * MiB}`);
    const filled = await run('qemu-io', ['-f', 'qcow2', ...writes, file], { timeoutMs: 600_000 });
    if (filled.code !== 0) throw new Error(`qemu-io: ${lastLine(filled.stderr || filled.stdout)}`);
    const mount = await mountOurs({ images, mountpoint: path.join(dir, 'mnt'), imageName: 'sparse.qcow2', nodeArgs: ctx.nodeArgs });
    const samples = new Samples();
    const repeat = ctx.cfg.benchRepeat;
    try {
      const target = path.join(dir, 'copy.raw');
      const variants = [
        { id: 'qemu', title: 'qemu-img convert -O raw', cmd: 'qemu-img', args: ['convert', '-O', 'raw', file, target] },
        { id: 'ours', title: 'cp --sparse=always of the view', cmd: 'cp', args: ['--sparse=always', mount.target, target] },
      ];
      for (let r = 0; r < repeat; r++) {
        for (const v of r % 2 === 0 ? variants : [...variants].reverse()) {
          checkAborted();
          fs.rmSync(target, { force: true });
          const t0 = process.hrtime.bigint();
          const res = await run(v.cmd, v.args, { timeoutMs: 600_000 });
          const secs = Number(process.hrtime.bigint() - t0) / 1e9;
          if (res.code !== 0) throw new Error(`${v.title} exited ${res.code ?? res.signal}: ${lastLine(res.stderr || res.stdout)}`);
          samples.add('sparse-copy', v.id, secs);
          ctx.log(`  [${r + 1}/${repeat}] ${v.title}: ${secs.toFixed(3)} s`);
        }
      }
      fs.rmSync(target, { force: true });
    } finally {
      await mount.stop();
    }
    ctx.record('sparse-copy', { seconds: samples.toJSON() });
    const q = samples.median('sparse-copy', 'qemu');
    const o = samples.median('sparse-copy', 'ours');
    const times = ratio(o, q);
    out.push(
      `### Copying a 4 GiB qcow2 holding 100 MiB out as raw (median of ${repeat}, interleaved)`,
      '',
      markdownTable(
        ['command', 'seconds', 'times qemu-img', 'target'],
        [
          ['qemu-img convert -O raw (the image)', formatSeconds(q), '1.00x', ''],
          [
            'cp --sparse=always (the view)',
            formatSeconds(o),
            formatRatio(times),
            Number.isFinite(times)
              ? `≤ ${SPARSE_COPY_TARGET}: ${times <= SPARSE_COPY_TARGET ? 'met' : 'MISSED'}`
              : `≤ ${SPARSE_COPY_TARGET}: not measured`,
          ],
        ],
        ['l', 'r', 'r', 'l'],
      ),
      '',
      `Target: ≤ ${SPARSE_COPY_TARGET}x. cp finds the data with SEEK_DATA/SEEK_HOLE, answered from the qcow2 map without reading the holes.`,
      '',
    );
  } finally {
    await forget();
  }
  return out.join('\n');
}
