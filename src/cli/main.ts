#!/usr/bin/env node
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { benchCommand } from './commands/bench';
import { checkCommand } from './commands/check';
import { createCommand } from './commands/create';
import { infoCommand } from './commands/info';
import { mapCommand } from './commands/map';
import { mountCommand } from './commands/mount';
import { unmountCommand } from './commands/unmount';
import { enableDebug, reportFatal } from './output';

if (process.argv.includes('--debug')) enableDebug();

async function main(): Promise<void> {
  const cli = yargs(hideBin(process.argv))
    .scriptName('vdiskfs')
    .usage('$0 <command> [options]\n\nShows VM disk images (qcow2, VMDK) as flat raw files you can dd, fio, losetup and mount.')
    .command(mountCommand)
    .command(unmountCommand)
    .command(createCommand)
    .command(infoCommand)
    .command(checkCommand)
    .command(mapCommand)
    .command(benchCommand);
  await cli
    .demandCommand(1, 'name a command: mount, unmount, create, info, check, map, bench')
    .strict()
    .recommendCommands()
    .help()
    .alias('h', 'help')
    .version()
    .wrap(Math.min(110, process.stdout.columns ?? 100))
    .fail((msg, err) => {
      if (err) throw err;
      process.stderr.write(`vdiskfs: ${msg} (see vdiskfs --help)\n`);
      process.exit(1);
    })
    .parseAsync();
}

main().catch((e) => {
  process.exitCode = reportFatal(e);
});
