import type { Argv, CommandModule } from 'yargs';
import type { ImageInfo } from '../../image';
import { Confinement, openImage } from '../../image';
import { withAllowOutside } from '../allow-outside';
import { chainAsGiven } from '../as-given';
import { driverFor, withFormat } from '../format-option';
import { lockForCommand, readLockMode, withForceShare } from '../image-lock';
import { formatSize } from '../size';
import { warn } from '../output';

interface InfoArgs {
  file: string;
  format?: string;
  'allow-outside': string[];
  'force-share': boolean;
  output: string;
  'backing-chain': boolean;
}

export const infoCommand: CommandModule<object, InfoArgs> = {
  command: 'info <file>',
  describe: 'describe an image (qemu-img info field names)',
  builder: (y: Argv) =>
    withFormat(withForceShare(withAllowOutside(y)))
      .positional('file', { type: 'string', demandOption: true })
      .option('output', { type: 'string', choices: ['human', 'json'], default: 'human' })
      .option('backing-chain', {
        type: 'boolean',
        default: false,
        describe: 'also describe every backing file / parent, top first (JSON: an array)',
      })
      .example('$0 info disk.qcow2', 'format, sizes, backing file, snapshots')
      .example('$0 info --backing-chain --output=json overlay.qcow2', 'the whole chain as JSON (qemu-img info --output=json names)'),
  handler: async (argv) => {
    const { file, confinement } = await Confinement.forFile(argv.file, argv['allow-outside']);
    if (argv.format) await driverFor(file, argv.format); // refuses content of another format, as qemu-img -f does
    const lock = await lockForCommand(file, confinement, readLockMode(argv['force-share'])); // dropped at exit if the open fails
    const image = await openImage(file, { writable: false, warn, confinement, format: argv.format });
    try {
      const chain = chainAsGiven(await image.info(), argv.file);
      const shown = argv['backing-chain'] ? chain : chain.slice(0, 1);
      if (argv.output === 'json') process.stdout.write(JSON.stringify(argv['backing-chain'] ? shown : shown[0], null, 4) + '\n');
      else process.stdout.write(shown.map(human).join('\n'));
    } finally {
      await image.close();
      await lock.close();
    }
  },
};

/** qemu-img info's human layout. */
function human(info: ImageInfo): string {
  const lines = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${formatSize(info['virtual-size'])} (${info['virtual-size']} bytes)`,
  ];
  if (info['actual-size'] !== undefined) lines.push(`disk size: ${formatSize(info['actual-size'])}`);
  if (info['cluster-size'] !== undefined) lines.push(`cluster_size: ${info['cluster-size']}`);
  if (info['dirty-flag']) lines.push('cleanly shut down: no');
  if (info['backing-filename'])
    lines.push(
      `backing file: ${info['backing-filename']}${info['full-backing-filename'] && info['full-backing-filename'] !== info['backing-filename'] ? ` (actual path: ${info['full-backing-filename']})` : ''}`,
    );
  if (info['backing-filename-format']) lines.push(`backing file format: ${info['backing-filename-format']}`);
  if (info.snapshots?.length) {
    lines.push('Snapshot list:', 'ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT');
    for (const s of info.snapshots) {
      const date = new Date(s['date-sec'] * 1000).toISOString().replace('T', ' ').slice(0, 19);
      const clock = new Date(s['vm-clock-sec'] * 1000).toISOString().slice(11, 19);
      lines.push(
        `${s.id.padEnd(9)} ${s.name.padEnd(17)} ${formatSize(s['vm-state-size']).padStart(7)} ${date} ${clock}.${String(Math.floor(s['vm-clock-nsec'] / 1e6)).padStart(3, '0')} ${String(s.icount ?? '--').padStart(10)}`,
      );
    }
  }
  const fs = info['format-specific'];
  if (fs) lines.push('Format specific information:', ...dump(fs.data, '    '));
  return lines.join('\n') + '\n';
}

/** Nested fields as qemu-img prints them: dashes become spaces, list items numbered `[i]:`. */
function dump(data: Record<string, unknown>, indent: string): string[] {
  const lines: string[] = [];
  for (const [k, v] of Object.entries(data)) {
    const key = k.replace(/-/g, ' ');
    if (Array.isArray(v)) {
      lines.push(`${indent}${key}:`);
      v.forEach((item, i) => {
        lines.push(`${indent}    [${i}]:`);
        if (item && typeof item === 'object') lines.push(...dump(item as Record<string, unknown>, indent + '        '));
        else lines.push(`${indent}        ${item}`);
      });
    } else if (v && typeof v === 'object') {
      lines.push(`${indent}${key}:`, ...dump(v as Record<string, unknown>, indent + '    '));
    } else lines.push(`${indent}${key}: ${String(v)}`);
  }
  return lines;
}
