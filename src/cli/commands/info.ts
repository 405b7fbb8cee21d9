import type { Argv, CommandModule } from 'yargs';
import type { ImageInfo } from '../../image';
import { Confinement, openImage } from '../../image';
import { withAllowOutside } from '../allow-outside';
import { lockForCommand, readLockMode, withForceShare } from '../image-lock';
import { formatSize } from '../size';
import { warn } from '../output';

export const infoCommand: CommandModule<object, { file: string; 'allow-outside': string[]; 'force-share': boolean; output: string; snapshot?: string }> = {
  command: 'info <file>',
  describe: 'describe an image (qemu-img info field names)',
  builder: (y: Argv) =>
    withForceShare(withAllowOutside(y))
      .positional('file', { type: 'string', demandOption: true })
      .option('output', { type: 'string', choices: ['human', 'json'], default: 'human' })
      .example('$0 info disk.qcow2', 'format, sizes, backing chain, snapshots')
      .example('$0 info --output=json disk.vmdk', 'the same as JSON (qemu-img info --output=json names)'),
  handler: async (argv) => {
    const { file, confinement } = await Confinement.forFile(argv.file, argv['allow-outside']);
    const lock = await lockForCommand(file, confinement, readLockMode(argv['force-share'])); // dropped at exit if the open fails
    const image = await openImage(file, { writable: false, warn, confinement });
    try {
      const info = await image.info();
      process.stdout.write(argv.output === 'json' ? JSON.stringify(info, null, 4) + '\n' : human(info));
    } finally {
      await image.close();
      await lock.close();
    }
  },
};

function human(info: ImageInfo, indent = ''): string {
  const lines = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${formatSize(info['virtual-size'])} (${info['virtual-size']} bytes)`,
  ];
  if (info['actual-size'] !== undefined) lines.push(`disk size: ${formatSize(info['actual-size'])}`);
  if (info['cluster-size'] !== undefined) lines.push(`cluster_size: ${info['cluster-size']}`);
  if (info['backing-filename']) lines.push(`backing file: ${info['backing-filename']}${info['full-backing-filename'] && info['full-backing-filename'] !== info['backing-filename'] ? ` (actual path: ${info['full-backing-filename']})` : ''}`);
  if (info['backing-filename-format']) lines.push(`backing file format: ${info['backing-filename-format']}`);
  if (info.snapshots?.length) {
    lines.push('Snapshot list:', 'ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT');
    for (const s of info.snapshots) {
      const date = new Date(s['date-sec'] * 1000).toISOString().replace('T', ' ').slice(0, 19);
      const clock = new Date(s['vm-clock-sec'] * 1000).toISOString().slice(11, 19);
      lines.push(`${s.id.padEnd(9)} ${s.name.padEnd(17)} ${formatSize(s['vm-state-size']).padStart(7)} ${date} ${clock}.${String(Math.floor(s['vm-clock-nsec'] / 1e6)).padStart(3, '0')} ${String(s.icount ?? '--').padStart(10)}`);
    }
  }
  const fs = info['format-specific'];
  if (fs) {
    lines.push('Format specific information:');
    for (const [k, v] of Object.entries(fs.data)) {
      if (Array.isArray(v)) {
        lines.push(`    ${k}:`);
        for (const item of v) {
          lines.push('        [');
          for (const [ik, iv] of Object.entries(item as Record<string, unknown>)) lines.push(`            ${ik}: ${iv}`);
          lines.push('        ]');
        }
      } else lines.push(`    ${k}: ${v}`);
    }
  }
  if (info['dirty-flag'] !== undefined && info['dirty-flag']) lines.push('dirty flag: true');
  let out = lines.map((l) => indent + l).join('\n') + '\n';
  if (info['backing-image']) out += '\n' + human(info['backing-image'], indent);
  return out;
}
