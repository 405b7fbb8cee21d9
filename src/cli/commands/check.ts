import type { Argv, CommandModule } from 'yargs';
import type { CheckResult } from '../../image';
import { Confinement, driverOptions, openImage } from '../../image';
import { withAllowOutside } from '../allow-outside';
import { driverFor, withFormat } from '../format-option';
import { lockForCommand, readLockMode, withForceShare } from '../image-lock';
import { VdiskError } from '../../io/errors';
import { warn } from '../output';
import { progressLine } from '../progress';

/** qemu-img check's exit status for a format without a check. */
const EXIT_NO_CHECK = 63;

interface CheckArgs {
  file: string;
  format?: string;
  'allow-outside': string[];
  'force-share': boolean;
  r?: string;
  output: string;
}

export const checkCommand: CommandModule<object, CheckArgs> = {
  command: 'check <file>',
  describe: 'check an image for consistency (qemu-img check exit codes)',
  builder: (y: Argv) =>
    withFormat(withForceShare(withAllowOutside(y)))
      .positional('file', { type: 'string', demandOption: true })
      .option('r', { type: 'string', choices: ['leaks', 'all'], describe: 'repair leaks, or everything' })
      .option('output', { type: 'string', choices: ['human', 'json'], default: 'human' })
      .example('$0 check disk.qcow2', 'exit 0 clean, 1 check failed, 2 corrupt, 3 leaks only, 63 format has no check')
      .example('$0 check -r all disk.qcow2', 'rebuild refcounts'),
  handler: async (argv) => {
    const { file, confinement } = await Confinement.forFile(argv.file, argv['allow-outside']);
    const driver = await driverFor(file, argv.format);
    if (!driver.check) {
      warn('This image format does not support checks');
      process.exitCode = EXIT_NO_CHECK;
      return;
    }
    if (argv.r && argv['force-share']) throw VdiskError.invalid('-U cannot be used with -r: repairing needs the image to itself');
    // As qemu-img: the whole chain must open (a backing file that is missing, loops or leads
    // outside the folder fails the check in one line) before this layer is checked.
    await (await openImage(file, { writable: false, warn: () => undefined, confinement, format: argv.format })).close();
    // Repair takes a writer's locks: never repair an image a VM or a mount is writing.
    const lock = await lockForCommand(file, confinement, argv.r ? 'write' : readLockMode(argv['force-share']));
    const progress = progressLine(`checking ${argv.file}`);
    const r = await driver
      .check(file, {
        ...driverOptions(file, { writable: !!argv.r, warn, confinement }),
        repair: !!argv.r,
        progress: (f, d) => progress.update(f, d),
      })
      .finally(() => (progress.done(), lock.close()));
    // Details go to stderr as in qemu-img, so --output=json stays parseable.
    for (const m of r.messages) process.stderr.write(m + '\n');
    process.stdout.write(argv.output === 'json' ? JSON.stringify(checkJson(argv.file, driver.name, r), null, 4) + '\n' : checkHuman(r));
    process.exitCode = r.errors ? 1 : r.corruptions ? 2 : r.leaks ? 3 : 0;
  },
};

/** qemu-img's ImageCheck: counters that are 0 are left out, as qemu-img does. */
export function checkJson(filename: string, format: string, r: CheckResult): Record<string, unknown> {
  const out: Record<string, unknown> = { filename, format, 'check-errors': r.errors };
  const optional: Array<[string, number | undefined]> = [
    ['image-end-offset', r.stats?.imageEndOffset],
    ['corruptions', r.corruptions],
    ['leaks', r.leaks],
    ['corruptions-fixed', r.corruptionsFixed],
    ['leaks-fixed', r.leaksFixed],
    ['total-clusters', r.stats?.totalClusters],
    ['allocated-clusters', r.stats?.allocatedClusters],
    ['fragmented-clusters', r.stats?.fragmentedClusters],
    ['compressed-clusters', r.stats?.compressedClusters],
  ];
  for (const [k, v] of optional) if (v) out[k] = v;
  return out;
}

/** qemu-img check's human report, line for line. */
export function checkHuman(r: CheckResult): string {
  let out = '';
  if (r.leaksFixed || r.corruptionsFixed) {
    out += `The following inconsistencies were found and repaired:\n\n    ${r.leaksFixed ?? 0} leaked clusters\n    ${r.corruptionsFixed ?? 0} corruptions\n\nDouble checking the fixed image now...\n`;
  }
  if (!r.corruptions && !r.leaks && !r.errors) out += 'No errors were found on the image.\n';
  else {
    if (r.corruptions)
      out += `\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    if (r.leaks) out += `\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    if (r.errors) out += `\n${r.errors} internal errors have occurred during the check.\n`;
  }
  const s = r.stats;
  if (s && s.totalClusters && s.allocatedClusters) {
    const pct = (n: number, of: number) => ((n * 100) / of).toFixed(2);
    out += `${s.allocatedClusters}/${s.totalClusters} = ${pct(s.allocatedClusters, s.totalClusters)}% allocated, ${pct(s.fragmentedClusters, s.allocatedClusters)}% fragmented, ${pct(s.compressedClusters, s.allocatedClusters)}% compressed clusters\n`;
  }
  if (s?.imageEndOffset) out += `Image end offset: ${s.imageEndOffset}\n`;
  return out;
}
