import type { Argv, CommandModule } from 'yargs';
import { probeImage } from '../../image';
import { openImage } from '../../image';
import { VdiskError } from '../../io/errors';
import { warn } from '../output';

export const checkCommand: CommandModule<object, { file: string; r?: string; output: string }> = {
  command: 'check <file>',
  describe: 'check an image for consistency (qemu-img check exit codes)',
  builder: (y: Argv) =>
    y
      .positional('file', { type: 'string', demandOption: true })
      .option('r', { type: 'string', choices: ['leaks', 'all'], describe: 'repair leaks, or everything' })
      .option('output', { type: 'string', choices: ['human', 'json'], default: 'human' })
      .example('$0 check disk.qcow2', 'exit 0 clean, 2 corrupt, 3 leaks only')
      .example('$0 check -r all disk.qcow2', 'rebuild refcounts'),
  handler: async (argv) => {
    const { driver } = await probeImage(argv.file);
    if (!driver.check) throw VdiskError.unsupported(`${driver.name} images cannot be checked`);
    const r = await driver.check(argv.file, {
      writable: !!argv.r,
      repair: !!argv.r,
      warn,
      openBacking: (p, format) => openImage(p, { writable: false, format }),
    });
    if (argv.output === 'json') {
      process.stdout.write(JSON.stringify({ filename: argv.file, format: driver.name, 'check-errors': r.errors, corruptions: r.corruptions, leaks: r.leaks, repaired: r.repaired ?? 0 }, null, 4) + '\n');
    } else {
      for (const m of r.messages) process.stdout.write(m + '\n');
      if (r.corruptions) process.stdout.write(`\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`);
      if (r.leaks) process.stdout.write(`\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`);
      if (!r.corruptions && !r.leaks && !r.errors) process.stdout.write('No errors were found on the image.\n');
    }
    process.exitCode = r.errors ? 1 : r.corruptions ? 2 : r.leaks ? 3 : 0;
  },
};
