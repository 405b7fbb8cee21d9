import type { Argv, CommandModule } from 'yargs';
import { Confinement, openImage } from '../../image';
import { withAllowOutside } from '../allow-outside';
import { lockForCommand, readLockMode, withForceShare } from '../image-lock';
import { warn } from '../output';

/** Bounded steps so a huge sparse disk is mapped without one giant extent list in memory. */
const STEP = 1 << 30;

export const mapCommand: CommandModule<object, { file: string; 'allow-outside': string[]; 'force-share': boolean; output: string }> = {
  command: 'map <file>',
  describe: 'show which guest ranges are data, zero, unallocated or from the backing file',
  builder: (y: Argv) =>
    withForceShare(withAllowOutside(y))
      .positional('file', { type: 'string', demandOption: true })
      .option('output', { type: 'string', choices: ['human', 'json'], default: 'human' })
      .example('$0 map disk.qcow2', 'like qemu-img map'),
  handler: async (argv) => {
    const { file, confinement } = await Confinement.forFile(argv.file, argv['allow-outside']);
    const lock = await lockForCommand(file, confinement, readLockMode(argv['force-share'])); // dropped at exit if the open fails
    const image = await openImage(file, { writable: false, warn, confinement });
    try {
      const rows: Array<{ start: number; length: number; kind: string; offset?: number; file?: string }> = [];
      for (let off = 0; off < image.virtualSize; off += STEP) {
        for (const e of await image.map(off, Math.min(STEP, image.virtualSize - off))) {
          const last = rows[rows.length - 1];
          const contiguous = last && last.kind === e.kind && last.start + last.length === e.offset && (e.hostOffset === undefined ? last.offset === undefined : last.offset !== undefined && last.offset + last.length === e.hostOffset);
          if (contiguous) last.length += e.length;
          else rows.push({ start: e.offset, length: e.length, kind: e.kind, offset: e.hostOffset, file: e.hostFile });
        }
      }
      if (argv.output === 'json') {
        const json = rows.map((r) => ({ start: r.start, length: r.length, depth: r.kind === 'backing' ? 1 : 0, present: r.kind === 'data' || r.kind === 'backing', zero: r.kind === 'zero' || r.kind === 'unallocated', data: r.kind === 'data' || r.kind === 'backing', ...(r.offset !== undefined ? { offset: r.offset } : {}) }));
        process.stdout.write(JSON.stringify(json, null, 2) + '\n');
      } else {
        process.stdout.write('Offset          Length          Kind        Mapped to       File\n');
        for (const r of rows) {
          const hex = (v: number) => '0x' + v.toString(16);
          process.stdout.write(`${hex(r.start).padEnd(16)}${hex(r.length).padEnd(16)}${r.kind.padEnd(12)}${r.offset !== undefined ? hex(r.offset).padEnd(16) : ''.padEnd(16)}${r.file ?? ''}\n`);
        }
      }
    } finally {
      await image.close();
      await lock.close();
    }
  },
};
