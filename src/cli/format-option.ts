import type { Argv } from 'yargs';
import { detectFormat, driverByName, drivers, readHead, type FormatDriver } from '../image';
import { VdiskError } from '../io/errors';

/** `-f FMT` as qemu-img's: name the format instead of probing it. */
export function withFormat<T>(y: Argv<T>): Argv<T & { format?: string }> {
  return y.option('format', {
    alias: 'f',
    type: 'string',
    requiresArg: true,
    choices: drivers.map((d) => d.name),
    describe: 'the image format (default: found from the content)',
  });
}

/**
 * The driver for `file`: the one `-f` names, which must recognise the content (raw reads
 * anything, as in qemu-img), or the one the content names.
 */
export async function driverFor(file: string, format: string | undefined): Promise<FormatDriver> {
  const head = await readHead(file);
  if (!format) return detectFormat(head, file);
  const driver = driverByName(format);
  if (!driver) throw VdiskError.invalid(`unknown format '${format}' (${formatNames()})`);
  if (!driver.probe(head, file)) throw VdiskError.invalid(`${file}: image is not in ${format} format`);
  return driver;
}

/** The formats vdiskfs knows, in qemu-img's names: 'qcow2, vmdk, vdi, vpc, raw'. */
export function formatNames(): string {
  return drivers.map((d) => d.name).join(', ');
}
