import type { Argv, CommandModule } from 'yargs';
import { probeImage } from '../../image';
import { Confinement, driverOptions } from '../../image';
import { withAllowOutside } from '../allow-outside';
import { lockForCommand, readLockMode, withForceShare } from '../image-lock';
import { VdiskError } from '../../io/errors';
import { warn } from '../output';

export const checkCommand: CommandModule<object, { file: string; 'allow-outside': string[]; 'force-share': boolean; r?: string; output: string }> = {
  command: 'check <file>',
  describe: 'check an image for consistency (qemu-img check exit codes)',
  builder: (y: Argv) =>
    withForceShare(withAllowOutside(y))
      .positional('file', { type: 'string', demandOption: true })
      .option('r', { type: 'string', choices: ['leaks', 'all'], describe: 'repair leaks, or everything' })
      .option('output', { type: 'string', choices: ['human', 'json'], default: 'human' })
      .example('$0 check disk.qcow2', 'exit 0 clean, 2 corrupt, 3 leaks only')
      .example('$0 check -r all disk.qcow2', 'rebuild refcounts'),
  handler: async (argv) => {
    const { file, confinement } = await Confinement.forFile(argv.file, argv['allow-outside']);
    const { driver } = await probeImage(file);
    if (!driver.check) throw VdiskError.unsupported(`${driver.name} images cannot be checked`);
    if (argv.r && argv['force-share']) throw VdiskError.invalid('-U cannot be used with -r: repairing needs the image to itself');
    // Repair takes a writer's locks: never repair an image a VM or a mount is writing.
    const lock = await lockForCommand(file, confinement, argv.r ? 'write' : readLockMode(argv['force-share']));
    const r = await driver.check(file, { ...driverOptions(file, { writable: !!argv.r, warn, confinement }), repair: !!argv.r }).finally(() => lock.close());
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
