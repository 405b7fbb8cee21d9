#!/usr/bin/env node
// No node flags on this line: see daemon-heap.ts for the mount daemon's, and why only it has them.
import yargs from 'yargs';
import type { CommandModule } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { enableDebug, reportFatal } from './output';
import { reexecWithDaemonFlags, servesInForeground } from './daemon-heap';

if (process.argv.includes('--debug')) enableDebug();

/* eslint-disable @typescript-eslint/no-require-imports */
// Each command's module is loaded only when that command runs: `vdiskfs check` should not pay
// for FUSE, the mount stack or the benchmark code (start-up is most of a small check's time).
// Each command has its own argument type; yargs' `command()` takes any of them.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyCommand = CommandModule<any, any>;
const COMMANDS: Record<string, () => AnyCommand> = {
  mount: () => (require('./commands/mount') as typeof import('./commands/mount')).mountCommand,
  unmount: () => (require('./commands/unmount') as typeof import('./commands/unmount')).unmountCommand,
  create: () => (require('./commands/create') as typeof import('./commands/create')).createCommand,
  info: () => (require('./commands/info') as typeof import('./commands/info')).infoCommand,
  check: () => (require('./commands/check') as typeof import('./commands/check')).checkCommand,
  map: () => (require('./commands/map') as typeof import('./commands/map')).mapCommand,
  bench: () => (require('./commands/bench') as typeof import('./commands/bench')).benchCommand,
};
/* eslint-enable @typescript-eslint/no-require-imports */
const ALIASES: Record<string, string> = { umount: 'unmount' };

/** The command named on the command line (its first word that is not an option), aliases resolved. */
function commandName(args: string[]): string | undefined {
  const first = args.find((a) => !a.startsWith('-'));
  return first && (ALIASES[first] ?? first);
}

/** The command named on the command line, when it is one we know; otherwise all are loaded (help, typos). */
function commandsToLoad(args: string[]): Array<() => AnyCommand> {
  const name = commandName(args);
  const only = name ? COMMANDS[name] : undefined;
  return only ? [only] : Object.values(COMMANDS);
}

async function main(): Promise<void> {
  const args = hideBin(process.argv);
  const cli = yargs(args)
    .scriptName('vdiskfs')
    .usage('$0 <command> [options]\n\nShows VM disk images (qcow2, VMDK) as flat raw files you can dd, fio, losetup and mount.')
    .option('debug', {
      type: 'boolean',
      default: false,
      global: true,
      describe: 'log what each layer does, and show the stack of an unexpected error (same as DEBUG=vdiskfs:*)',
    });
  // eslint-disable-next-line @typescript-eslint/no-unsafe-argument -- see AnyCommand
  for (const load of commandsToLoad(args)) cli.command(load());
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

// Before stdio is touched: a foreground mount serves with the daemon's heap flags (daemon-heap.ts).
if (commandName(hideBin(process.argv)) === 'mount' && servesInForeground(hideBin(process.argv))) reexecWithDaemonFlags();

// A reader that went away (`vdiskfs map ... | head`) ends the command quietly, with what it
// printed: exit 0, as qemu-img's, and never a stack trace for a pipe the user closed.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  process.exitCode = reportFatal(e);
});

main().catch((e) => {
  process.exitCode = reportFatal(e);
});
