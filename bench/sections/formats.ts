/**
 * VHDX, VHD and VDI: fio through our mount against qemu-storage-daemon's export of the same
 * image (QEMU's vhdx, vpc and vdi drivers), fresh `qemu-img create -f <fmt> X 1G` per job and
 * repeat, the do-nothing mount beside them as the ceiling. Target: every job at least as fast as
 * the peer (the formats issue).
 */
import type { SectionContext, SectionReport } from './context';
import { driverAvailable, peerFio, type DiskFormat } from './peer';

const FORMATS: Array<{ format: DiskFormat; title: string }> = [
  { format: 'vhdx', title: 'VHDX' },
  { format: 'vpc', title: 'VHD (vpc)' },
  { format: 'vdi', title: 'VDI' },
];

export async function formatsSection(ctx: SectionContext): Promise<SectionReport> {
  const out: string[] = ['## VHDX, VHD and VDI', ''];
  for (const { format, title } of FORMATS) {
    ctx.log(`## ${title}: vdiskfs vs qemu-storage-daemon`);
    out.push(`### ${title}: fio, vdiskfs vs qemu-storage-daemon (MB/s, median)`, '');
    const why = await driverAvailable(format, ctx.workRoot, ctx.cfg.imageSize);
    if (why) {
      ctx.log(`  not available: ${why}`);
      out.push(`not available: ${why}`, '');
      continue;
    }
    const { table } = await peerFio(ctx, format, () => 1.0, { withFuseNative: false });
    out.push(
      `Fresh \`qemu-img create -f ${format} X 1G\` per job and repeat (read jobs: the same \`qemu-img convert\`-filled image for both). Target: every job ≥ 1.0.`,
      '',
      table,
      '',
    );
  }
  return out.join('\n');
}
