/**
 * VMDK: the seed's own command (`qemu-img bench -w -c 1024 -s 128K -d 1 -t none -f vmdk`) on
 * both sides, multi-grain allocation on and off, and fio through the mounts.
 */
import type { FioJob } from '../lib/fio';
import { formatRatio, formatSeconds, markdownTable, ratio, verdict } from '../lib/stats';
import { allocatedMiB, benchArgs, runDriverBench, standardVariants } from './driver-bench';
import type { SectionContext, SectionReport } from './context';
import { driverAvailable, peerFio } from './peer';

/** The seed's target for 128 KiB writes (≥ 2.0); the transport issue's for the rest: every job ≥ 1.0, 4 KiB writes ≥ 1.5. */
export function vmdkGoal(job: FioJob): number {
  if (!job.writes) return 1.0;
  return job.args.includes('--bs=4k') ? 1.5 : 2.0;
}

export async function vmdkSection(ctx: SectionContext): Promise<SectionReport> {
  const out: string[] = ['## VMDK', ''];
  ctx.log('## VMDK');
  const why = await driverAvailable('vmdk', ctx.workRoot, ctx.cfg.imageSize);
  if (why) {
    ctx.log(`  not available: ${why}`);
    return [...out, `not available: ${why}`].join('\n');
  }

  const args = benchArgs(ctx, 'vmdk');
  const { samples, problems } = await runDriverBench(ctx, 'vmdk', standardVariants(args, [{ id: 'single', flags: ['--no-multi-alloc'] }]));
  const repeat = ctx.cfg.benchRepeat;
  ctx.record('vmdk-bench', { seconds: samples.toJSON(), problems });
  const secs = (id: string) => samples.median('bench', id);
  const mib = (id: string) => allocatedMiB(samples, id);
  const speedup = ratio(secs('qemu'), secs('ours'));
  const multiGain = ratio(secs('single'), secs('ours'));
  out.push(
    `### \`bench ${args.join(' ')} test.vmdk\` on a fresh \`qemu-img create -f vmdk test.vmdk 1G\` (median of ${repeat}, the three commands interleaved)`,
    '',
    markdownTable(
      ['command', 'seconds', 'speed-up over qemu-img', 'target', 'image allocated'],
      [
        ['qemu-img bench', formatSeconds(secs('qemu')), '1.00x', '', mib('qemu')],
        ['vdiskfs bench', formatSeconds(secs('ours')), formatRatio(speedup), verdict(speedup, 3), mib('ours')],
        [
          'vdiskfs bench --no-multi-alloc',
          formatSeconds(secs('single')),
          formatRatio(ratio(secs('qemu'), secs('single'))),
          '',
          mib('single'),
        ],
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
  const { table } = await peerFio(ctx, 'vmdk', vmdkGoal, { withFuseNative: false }); // fuse-native: the foundation section measures it
  out.push(
    '### fio: vdiskfs vs qemu-storage-daemon (MB/s, median)',
    '',
    'Fresh `qemu-img create -f vmdk X 1G` per job and repeat (read jobs: the same `qemu-img convert`-filled image for both). The do-nothing mount (`--null-driver`, same run) is the ceiling of our FUSE stack: where *ceiling / peer* is below a target, no driver can reach it through this FUSE stack. Targets: 128 KiB writes ≥ 2.0, 4 KiB writes ≥ 1.5, reads ≥ 1.0.',
    '',
    table,
  );
  return out.join('\n');
}
