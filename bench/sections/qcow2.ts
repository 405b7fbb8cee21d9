/**
 * qcow2: the drivers alone (`vdiskfs bench` vs `qemu-img bench`, the seed's command line with
 * `-f qcow2`: where the qcow2 write path stands once the transport stops hiding it), then fio
 * through our mount vs qemu-storage-daemon.
 */
import type { FioJob } from '../lib/fio';
import { formatRatio, formatSeconds, markdownTable, ratio } from '../lib/stats';
import type { SectionContext, SectionReport } from './context';
import { allocatedMiB, benchArgs, runDriverBench, standardVariants } from './driver-bench';
import { driverAvailable, peerFio } from './peer';

/** The transport issue's targets: every job ≥ 1.0 of the peer, 4 KiB write jobs ≥ 1.5. */
export function qcow2Goal(job: FioJob): number {
  return job.writes && job.args.includes('--bs=4k') ? 1.5 : 1.0;
}

export async function qcow2Section(ctx: SectionContext): Promise<SectionReport> {
  const out = ['## qcow2', ''];
  ctx.log('## qcow2');
  const why = await driverAvailable('qcow2', ctx.workRoot, ctx.cfg.imageSize);
  if (why) {
    ctx.log(`  not available: ${why}`);
    return [...out, `not available: ${why}`].join('\n');
  }
  // A non-zero pattern: qemu-img bench writes zeros by default, which our merger would turn into
  // zero clusters — less work, an unfair win (the "image allocated" column shows it).
  const args = [...benchArgs(ctx, 'qcow2'), '--pattern', '165'];
  const { samples, problems } = await runDriverBench(ctx, 'qcow2', standardVariants(args));
  ctx.record('qcow2-bench', { seconds: samples.toJSON(), problems });
  const secs = (id: string) => samples.median('bench', id);
  out.push(
    `### \`bench ${args.join(' ')} test.qcow2\` on a fresh \`qemu-img create -f qcow2 test.qcow2 1G\` (median of ${ctx.cfg.benchRepeat}, interleaved)`,
    '',
    markdownTable(
      ['command', 'seconds', 'speed-up over qemu-img', 'image allocated'],
      [
        ['qemu-img bench', formatSeconds(secs('qemu')), '1.00x', allocatedMiB(samples, 'qemu')],
        ['vdiskfs bench', formatSeconds(secs('ours')), formatRatio(ratio(secs('qemu'), secs('ours'))), allocatedMiB(samples, 'ours')],
      ],
      ['l', 'r', 'r', 'r'],
    ),
    '',
    'The drivers alone, no FUSE. `-t none`: QEMU bypasses the host page cache (O_DIRECT); vdiskfs cannot, so its final flush (metadata + fdatasync) is inside the timed run. Every image passes `qemu-img check` afterwards.',
    ...problems.map((p) => `- ${p}`),
    '',
  );
  ctx.log('## qcow2: vdiskfs vs qemu-storage-daemon');
  const { table } = await peerFio(ctx, 'qcow2', qcow2Goal, { withFuseNative: false, withIoUring: true }); // fuse-native: the foundation section measures it
  out.push(
    '### fio: vdiskfs vs qemu-storage-daemon (MB/s, median)',
    '',
    'Fresh `qemu-img create -f qcow2 X 1G` per job and repeat (read jobs: the same `qemu-img convert`-filled image for both). Targets: every job ≥ 1.0, 4 KiB writes ≥ 1.5.',
    '',
    table,
  );
  return out.join('\n');
}
