import fs from 'node:fs';
import * as path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { Confinement, detectFormat, driverByName, drivers, extensionOf, openImage, readHead } from '../../image';
import { formatNames } from '../format-option';
import { withAllowOutside } from '../allow-outside';
import { VdiskError } from '../../io/errors';
import { parseOptionList, parseSize } from '../size';
import { progressLine } from '../progress';

interface CreateArgs {
  format?: string;
  o?: string | string[];
  b?: string;
  F?: string;
  file: string;
  size?: string;
  'allow-outside': string[];
}

export const createCommand: CommandModule<object, CreateArgs> = {
  command: 'create <file> [size]',
  describe: 'create an image (qemu-img create vocabulary)',
  builder: (y: Argv) =>
    withAllowOutside(y)
      .positional('file', { type: 'string', demandOption: true })
      .positional('size', { type: 'string', describe: "virtual size: 1G, 512M, bytes (default: the backing file's)" })
      .option('format', {
        alias: 'f',
        type: 'string',
        describe: 'qcow2, vmdk, vhdx, vpc (VHD), vdi or raw (default: from the extension: .qcow2, .vmdk, .vhdx, .vhd, .vdi, .img/.raw)',
      })
      .option('o', {
        type: 'string',
        requiresArg: true,
        describe:
          'format options (repeatable): cluster_size=,compat=,refcount_bits=,lazy_refcounts=,extended_l2=,preallocation= (qcow2); subformat=,zeroed_grain=,adapter_type=,hwversion= (vmdk); subformat=,block_size=,log_size=,block_state_zero= (vhdx); subformat=,force_size= (vpc); static= (vdi)',
      })
      .option('b', { type: 'string', describe: 'backing file (qcow2) / parent (vmdk; a differencing vhdx, vpc or vdi)' })
      .option('F', { type: 'string', describe: 'backing file format (needed with -b, as in qemu-img)' })
      .example('$0 create -f qcow2 disk.qcow2 10G', 'empty 10 GiB qcow2')
      .example('$0 create -f qcow2 -o cluster_size=2M,extended_l2=on big.qcow2 100G', 'with qemu-img option names')
      .example('$0 create -f vmdk -o subformat=streamOptimized disk.vmdk 1G', 'a streamOptimized VMDK')
      .example('$0 create -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2', 'an overlay on a backing file')
      .example('$0 create -f vpc -o subformat=fixed disk.vhd 10G', 'a fixed VHD (Azure, Virtual PC)')
      .example('$0 create -f vpc -b base.vhd -F vpc child.vhd', 'a differencing VHD (qemu-img cannot make one)'),
  handler: async (argv) => {
    // Without -f the name decides (qemu-img would make a raw file named .qcow2, which no mount shows).
    const format = argv.format ?? formatOfName(argv.file);
    const driver = driverByName(format);
    if (!driver?.create) throw VdiskError.invalid(`unknown or unsupported format '${format}' (${formatNames()})`);
    if (fs.existsSync(argv.file)) throw VdiskError.invalid(`${argv.file} already exists`);
    let size = argv.size !== undefined ? parseSize(argv.size) : undefined;
    const folder = await fs.promises.realpath(path.dirname(path.resolve(argv.file))).catch(() => {
      throw new VdiskError('ENOENT', `folder ${path.dirname(argv.file)} does not exist`);
    });
    const file = path.join(folder, path.basename(argv.file));
    // The backing file the user names is theirs to choose; what the new image names is confined
    // to its own folder, the backing file's folder and the folders given with --allow-outside.
    const doors = [...argv['allow-outside']];
    if (argv.b) {
      const backingPath = path.resolve(folder, argv.b);
      if (!fs.existsSync(backingPath)) throw new VdiskError('ENOENT', `backing file ${argv.b} does not exist`);
      // qemu-img refuses to guess a backing format: a probed one is how a raw disk gets read as qcow2.
      if (!argv.F) {
        const seen = await readHead(backingPath).then(
          (h) => detectFormat(h, backingPath).name,
          () => undefined,
        );
        throw VdiskError.invalid(
          `${argv.file}: backing file specified without backing format${seen ? ` (its content is ${seen}: add -F ${seen})` : ' (add -F)'}`,
        );
      }
      doors.push(path.dirname(await fs.promises.realpath(backingPath)));
      if (size === undefined) {
        const backing = await openImage(backingPath, { writable: false, format: argv.F });
        size = backing.virtualSize;
        await backing.close();
      }
    }
    if (size === undefined) throw VdiskError.invalid('a size is needed (or -b with a backing file)');
    const confinement = await Confinement.create(folder, doors);
    const options = parseOptionList(argv.o);
    const progress = progressLine(`creating ${argv.file}`);
    await driver
      .create(file, {
        size,
        options,
        backingFile: argv.b,
        backingFormat: argv.F,
        openBacking: (p, format) => openImage(p, { writable: false, format }),
        reach: (name, field) => confinement.reach(file, name, field),
        progress: (f) => progress.update(f),
      })
      .finally(() => progress.done());
    const opts = Object.entries(options)
      .map(([k, v]) => ` ${k}=${v}`)
      .join('');
    process.stdout.write(`Formatting '${argv.file}', fmt=${format} size=${size}${argv.b ? ` backing_file=${argv.b}` : ''}${opts}\n`);
  },
};

/** The format a new image's name asks for: .qcow2, .vmdk, .vhdx, .vhd, .vdi, .img/.raw. */
function formatOfName(file: string): string {
  const ext = extensionOf(file);
  const format = drivers.find((d) => d.extensions.includes(ext))?.name;
  if (!format) {
    const flags = drivers.map((d) => `-f ${d.name}`);
    throw VdiskError.invalid(
      `${file}: cannot tell the format from the name; add ${flags.slice(0, -1).join(', ')} or ${flags[flags.length - 1]}`,
    );
  }
  return format;
}
