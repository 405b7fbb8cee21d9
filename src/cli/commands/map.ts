import fs from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import type { Image } from '../../image';
import { Confinement, openImage } from '../../image';
import { VdiskError } from '../../io/errors';
import { seekDataOrHole } from '../../io/syscalls';
import { withAllowOutside } from '../allow-outside';
import { chainAsGiven } from '../as-given';
import { driverFor, withFormat } from '../format-option';
import { lockForCommand, readLockMode, withForceShare } from '../image-lock';
import { warn } from '../output';
import { parseSize } from '../size';
import { progressLine } from '../progress';

/**
 * map reads each table once, in order: small caches keep its memory near qemu-img's at any size
 * (a 2 TiB VMDK has 128 MiB of grain tables; the default cache would hold 64 MiB of them).
 */
const MAP_TUNING = { qcow2: { cacheSize: 4 << 20 }, vmdk: { tableCacheBytes: 1 << 20 } };

/** Bounded steps so a huge sparse disk is mapped without one giant extent list in memory. */
const STEP = 1 << 30;

interface MapArgs {
  file: string;
  format?: string;
  'allow-outside': string[];
  'force-share': boolean;
  output: string;
  'start-offset': string;
  'max-length'?: string;
}

/** One range as qemu-img map --output=json reports it (depth: which layer of the chain answers). */
interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
  file: string;
}

/** A layer of the backing chain: opened on demand, shown under the name qemu-img would use. */
interface Layer {
  name: string;
  real: string;
  format?: string;
  image?: Image;
  /** Raw, or a fixed VHD: the layer's data is its host file's bytes, holes included. */
  passesThrough?: boolean;
}

async function passesThrough(image: Image): Promise<boolean> {
  if (image.format === 'raw') return true;
  return image.format === 'vpc' && (await image.info())['format-specific']?.data['subformat'] === 'fixed';
}

/** Host files asked where their holes are (SEEK_DATA/SEEK_HOLE), opened once each. */
class HoleFinder {
  private readonly fds = new Map<string, number | undefined>();

  /** [start, length, hole] runs of host range [at, at+len) in `file`; one data run when the file cannot tell. */
  runs(file: string, at: number, len: number): Array<[number, number, boolean]> {
    const fd = this.fdOf(file);
    if (fd === undefined) return [[at, len, false]];
    const out: Array<[number, number, boolean]> = [];
    const end = at + len;
    for (let pos = at; pos < end;) {
      const data = seekDataOrHole(fd, pos, 'data');
      const next = data === undefined || data > pos ? Math.min(data ?? end, end) : Math.min(seekDataOrHole(fd, pos, 'hole') ?? end, end);
      out.push([pos, next - pos, data === undefined || data > pos]);
      pos = next;
    }
    return out;
  }

  /**
   * QEMU looks at a format layer's host file only where that can change the answer: flat VMDK
   * extents and data files, a layer that passes its file through (raw, a fixed VHD), and a qcow2
   * file it takes for metadata-preallocated (much of the file a hole: less than 9/10 of it on
   * disk). The image file of a sparse VMDK, VHDX, dynamic VHD or VDI is never asked (QEMU's
   * block status does not recurse into it).
   */
  worthAsking(file: string, image: Image, passesThrough: boolean): boolean {
    if (passesThrough || file !== image.path) return true;
    if (image.format !== 'qcow2') return false;
    const fd = this.fdOf(file);
    if (fd === undefined) return false;
    const st = fs.fstatSync(fd);
    return st.blocks * 512 * 10 < st.size * 9;
  }

  private fdOf(file: string): number | undefined {
    if (!this.fds.has(file)) {
      let fd: number | undefined;
      try {
        // The driver reached this file through the confinement; still never block on a FIFO.
        fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
        if (!fs.fstatSync(fd).isFile()) {
          fs.closeSync(fd);
          fd = undefined;
        }
      } catch {
        fd = undefined;
      }
      this.fds.set(file, fd);
    }
    return this.fds.get(file);
  }

  close(): void {
    for (const fd of this.fds.values()) if (fd !== undefined) fs.closeSync(fd);
    this.fds.clear();
  }
}

export const mapCommand: CommandModule<object, MapArgs> = {
  command: 'map <file>',
  describe: 'show which guest ranges are data, zero, unallocated, and in which file of the backing chain',
  builder: (y: Argv) =>
    withFormat(withForceShare(withAllowOutside(y)))
      .positional('file', { type: 'string', demandOption: true })
      .option('output', { type: 'string', choices: ['human', 'json'], default: 'human' })
      .option('start-offset', { type: 'string', default: '0', describe: 'first guest byte to map (1G, 512M, bytes)' })
      .option('max-length', { type: 'string', describe: 'map at most this many bytes' })
      .example('$0 map disk.qcow2', 'ranges, their kind and where they live')
      .example('$0 map --output=json --start-offset 1G --max-length 64M overlay.qcow2', 'as qemu-img map --output=json'),
  handler: async (argv) => {
    const { file, confinement } = await Confinement.forFile(argv.file, argv['allow-outside']);
    if (argv.format) await driverFor(file, argv.format);
    const lock = await lockForCommand(file, confinement, readLockMode(argv['force-share'])); // dropped at exit if the open fails
    const top = await openImage(file, { writable: false, warn, confinement, format: argv.format, tuning: MAP_TUNING });
    const layers: Layer[] = [];
    const holes = new HoleFinder();
    try {
      layers.push(...chainLayers(await top.info(), argv.file, file));
      layers[0]!.image = top;
      layers[0]!.passesThrough = await passesThrough(top);
      const open = async (depth: number): Promise<Image | undefined> => {
        const l = layers[depth];
        if (l && !l.image) {
          l.image = await openImage(l.real, { writable: false, warn, confinement, format: l.format, tuning: MAP_TUNING });
          l.passesThrough = await passesThrough(l.image);
        }
        return l?.image;
      };
      const start = parseSize(argv['start-offset'], '--start-offset');
      const end = Math.min(
        top.virtualSize,
        argv['max-length'] !== undefined ? start + parseSize(argv['max-length'], '--max-length') : Infinity,
      );
      const rows: MapEntry[] = [];
      const progress = progressLine(`mapping ${argv.file}`);
      for (let off = start; off < end; off += STEP) {
        progress.update((off - start) / (end - start));
        for (const e of await mapLayer(open, layers, holes, 0, off, Math.min(STEP, end - off))) {
          const last = rows[rows.length - 1];
          if (last && mergeable(last, e)) last.length += e.length;
          else rows.push(e);
        }
      }
      progress.done();
      if (argv.output === 'json') {
        process.stdout.write(`[${rows.map(jsonRow).join(',\n')}]\n`);
      } else {
        const hex = (v: number) => '0x' + v.toString(16);
        process.stdout.write('Offset          Length          Kind        Depth  Mapped to       File\n');
        for (const r of rows) {
          const kind = r.data ? 'data' : r.present ? 'zero' : 'unallocated';
          process.stdout.write(
            `${hex(r.start).padEnd(16)}${hex(r.length).padEnd(16)}${kind.padEnd(12)}${String(r.depth).padEnd(7)}${(r.offset !== undefined ? hex(r.offset) : '').padEnd(16)}${r.present ? r.file : ''}\n`.replace(
              / +\n$/,
              '\n',
            ),
          );
        }
      }
    } finally {
      holes.close();
      for (const l of layers.reverse()) await l.image?.close();
      if (!layers.length) await top.close();
      await lock.close();
    }
  },
};

/** One row laid out as qemu-img map --output=json lays it out, so the two outputs diff cleanly. */
function jsonRow(r: MapEntry): string {
  const offset = r.offset !== undefined ? `, "offset": ${r.offset}` : '';
  return `{ "start": ${r.start}, "length": ${r.length}, "depth": ${r.depth}, "present": ${r.present}, "zero": ${r.zero}, "data": ${r.data}${offset}}`;
}

/** The chain top first: names as qemu-img shows them, real paths and formats to open them by. */
function chainLayers(info: Awaited<ReturnType<Image['info']>>, given: string, real: string): Layer[] {
  const shown = chainAsGiven(info, given);
  const layers: Layer[] = [];
  let cur: typeof info | undefined = info;
  let path = real;
  let format: string | undefined;
  for (const s of shown) {
    layers.push({ name: s.filename, real: path, format });
    if (!cur) break;
    path = cur['full-backing-filename'] ?? path;
    format = cur['backing-filename-format'];
    cur = cur['backing-image'];
  }
  return layers;
}

/**
 * Where each byte of [off, off+len) comes from: this layer's data or zero clusters, or (for
 * ranges this layer leaves to its backing file) the backing layer's answer, depth+1, split where
 * that layer's answer changes, as qemu-img map splits them.
 */
async function mapLayer(
  open: (d: number) => Promise<Image | undefined>,
  layers: Layer[],
  holes: HoleFinder,
  depth: number,
  off: number,
  len: number,
): Promise<MapEntry[]> {
  const image = await open(depth);
  if (!image) throw new VdiskError('EIO', `backing layer ${depth} of the chain could not be opened`);
  const file = layers[depth]!.name;
  const out: MapEntry[] = [];
  for (const e of await image.map(off, len)) {
    if (e.kind === 'backing') {
      const below = layers[depth + 1] ? await open(depth + 1) : undefined;
      const inBacking = below ? Math.max(0, Math.min(e.offset + e.length, below.virtualSize) - e.offset) : 0;
      if (inBacking > 0) out.push(...(await mapLayer(open, layers, holes, depth + 1, e.offset, inBacking)));
      // Past the end of a shorter backing file the disk reads zeros that no layer stores.
      if (inBacking < e.length)
        out.push({
          start: e.offset + inBacking,
          length: e.length - inBacking,
          depth: depth + 1,
          present: false,
          zero: true,
          data: false,
          file,
        });
      continue;
    }
    const data = e.kind === 'data';
    const offset = data && e.hostOffset !== undefined && !e.compressed ? e.hostOffset : undefined;
    if (offset === undefined || !e.hostFile || !holes.worthAsking(e.hostFile, image, layers[depth]!.passesThrough ?? false)) {
      out.push({
        start: e.offset,
        length: e.length,
        depth,
        present: e.kind !== 'unallocated',
        zero: !data,
        data,
        ...(offset !== undefined ? { offset } : {}),
        file,
      });
      continue;
    }
    // As QEMU: data that sits in a hole of the host file reads as zeros, so it is also "zero";
    // a raw layer passes the host file through, so there a hole is no data at all.
    const raw = image.format === 'raw';
    for (const [at, n, hole] of holes.runs(e.hostFile, offset, e.length)) {
      const start = e.offset + (at - offset);
      out.push({ start, length: n, depth, present: true, zero: hole, data: !(hole && raw), offset: at, file });
    }
  }
  return out;
}

/** qemu-img map's merge rule: same answer, same layer, and host offsets that continue. */
function mergeable(a: MapEntry, b: MapEntry): boolean {
  if (a.start + a.length !== b.start) return false;
  if (a.depth !== b.depth || a.present !== b.present || a.zero !== b.zero || a.data !== b.data || a.file !== b.file) return false;
  if ((a.offset === undefined) !== (b.offset === undefined)) return false;
  return a.offset === undefined || a.offset + a.length === b.offset;
}
