/**
 * `vdiskfs bench` on its own, for when the CLI entry is not built: the same CommandModule,
 * the same one-line errors.
 */
import yargs from 'yargs';
import { benchCommand } from '../../src/cli/commands/bench';
import { isVdiskError } from '../../src/io/errors';

export async function main(argv: string[]): Promise<number> {
  try {
    await yargs(argv)
      .scriptName('vdiskfs')
      .command(benchCommand)
      .demandCommand(1)
      .strict()
      .fail((msg, err) => {
        throw err ?? new Error(msg);
      })
      .parseAsync();
    return 0;
  } catch (e) {
    process.stderr.write(`vdiskfs: ${isVdiskError(e) || e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => process.exit(code));
}
