import type { Argv } from 'yargs';

/**
 * `--allow-outside DIR` (repeatable): the door in the confinement rule (src/image/confine.ts).
 * Images may reach backing files, data files and extents only inside their own folder, unless
 * the user names another folder here (shared base images, raw device mappings).
 */
export function withAllowOutside<T>(y: Argv<T>): Argv<T & { 'allow-outside': string[] }> {
  return y.option('allow-outside', {
    type: 'string',
    array: true,
    // One folder per flag: an array option would otherwise swallow the positionals after it
    // (`mount --allow-outside /shared ./images /mnt` found no <images>).
    nargs: 1,
    default: [] as string[],
    requiresArg: true,
    describe: 'let images reach backing files and extents in this folder too (repeatable)',
  });
}
