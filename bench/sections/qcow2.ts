/** qcow2 through our mount vs qemu-storage-daemon. Targets from the qcow2 issue. */
import type { FioJob } from '../lib/fio';
import type { SectionContext, SectionReport } from './context';
import { driverAvailable, peerFio } from './peer';

export function qcow2Goal(job: FioJob): number {
  if (!job.writes) return 0.8;
  return job.id === 'seqw4k' ? 1.5 : 1.0;
}

export async function qcow2Section(ctx: SectionContext): Promise<SectionReport> {
  const head = ['## qcow2: vdiskfs vs qemu-storage-daemon (fio MB/s, median)', ''];
  ctx.log('## qcow2: vdiskfs vs qemu-storage-daemon');
  const why = await driverAvailable('qcow2', ctx.workRoot, ctx.cfg.imageSize);
  if (why) {
    ctx.log(`  not available: ${why}`);
    return [...head, `not available: ${why}`].join('\n');
  }
  const { table } = await peerFio(ctx, 'qcow2', qcow2Goal);
  return [
    ...head,
    `Fresh \`qemu-img create -f qcow2 X 1G\` per job and repeat (read jobs: the same \`qemu-img convert\`-filled image for both). Targets: writes ≥ 1.0, seq write 4k ≥ 1.5, reads ≥ 0.8.`,
    '',
    table,
  ].join('\n');
}
