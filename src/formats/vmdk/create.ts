import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { randomInt } from 'node:crypto';
import { HostFile } from '../../io/host-file';
import { VdiskError } from '../../io/errors';
import { alignUp } from '../../io/safe-int';
import type { CreateOptions } from '../types';
import { formatCid } from './descriptor';
import * as hdr from './sparse-header';
import { SECTOR } from './sparse-header';

/** qemu-img's subformats and what each writes. */
const SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'] as const;
type Subformat = (typeof SUBFORMATS)[number];
const ADAPTERS = ['ide', 'buslogic', 'lsilogic', 'legacyESX'];
/** Split extents are 2 GiB each (VMware's twoGbMaxExtent*). */
const SPLIT_BYTES = 2 * 1024 * 1024 * 1024;
const GRAIN_SECTORS = 128; // 64 KiB grains, as qemu-img and VMware make them
const GTES_PER_GT = 512;
const DESCRIPTOR_SECTORS = 20; // room reserved for the embedded descriptor

function flag(v: string | undefined): boolean {
  return v !== undefined && ['on', 'true', 'yes', '1'].includes(v.toLowerCase());
}

/** `vdiskfs create -f vmdk [-o subformat=,zeroed_grain=,adapter_type=,hwversion=] [-b parent] FILE SIZE`. */
export async function createVmdk(file: string, opts: CreateOptions): Promise<void> {
  const o = opts.options;
  const known = new Set([
    'subformat',
    'zeroed_grain',
    'adapter_type',
    'hwversion',
    'compat6',
    'backing_file',
    'backing_fmt',
    'toolsversion',
  ]);
  for (const k of Object.keys(o)) if (!known.has(k)) throw VdiskError.invalid(`vmdk: unknown option '${k}'`);
  const sub = (o['subformat'] ?? 'monolithicSparse') as Subformat;
  if (!SUBFORMATS.includes(sub)) throw VdiskError.invalid(`vmdk: unknown subformat '${sub}' (one of ${SUBFORMATS.join(', ')})`);
  const adapter = o['adapter_type'] ?? 'ide';
  if (!ADAPTERS.includes(adapter)) throw VdiskError.invalid(`vmdk: unknown adapter_type '${adapter}'`);
  const hw = o['hwversion'] ?? (flag(o['compat6']) ? '6' : '4');
  const zeroed = flag(o['zeroed_grain']);
  const backingFile = opts.backingFile ?? o['backing_file'];

  let size = opts.size;
  let parentCid = 0xffffffff;
  if (backingFile) {
    if (sub !== 'monolithicSparse' && sub !== 'twoGbMaxExtentSparse')
      throw VdiskError.invalid(`vmdk: a backing file needs a sparse subformat, not ${sub}`);
    const parentPath = path.resolve(path.dirname(file), backingFile);
    const parent = await opts.openBacking(parentPath, opts.backingFormat);
    try {
      const pcid = (parent as { cid?: number }).cid;
      if (parent.format !== 'vmdk' || typeof pcid !== 'number')
        throw VdiskError.invalid(`vmdk: backing file ${backingFile} is ${parent.format}; only vmdk parents are supported`);
      parentCid = pcid;
      if (!size) size = parent.virtualSize;
    } finally {
      await parent.close();
    }
  }
  if (!Number.isSafeInteger(size) || size <= 0) throw VdiskError.invalid(`vmdk: invalid size ${size}`);
  const sectors = Math.ceil(size / SECTOR);

  const base = path.basename(file, '.vmdk');
  const dir = path.dirname(file);
  const extents: Array<{ name: string; sectors: number }> = [];
  const flat = sub.endsWith('Flat');
  if (sub === 'monolithicSparse' || sub === 'streamOptimized') extents.push({ name: path.basename(file), sectors });
  else if (sub === 'monolithicFlat') extents.push({ name: `${base}-flat.vmdk`, sectors });
  else {
    const per = SPLIT_BYTES / SECTOR;
    for (let i = 0, left = sectors; left > 0; i++, left -= per) {
      extents.push({ name: `${base}-${flat ? 'f' : 's'}${String(i + 1).padStart(3, '0')}.vmdk`, sectors: Math.min(per, left) });
    }
  }
  const extentLines = extents.map((e) => `RW ${e.sectors} ${flat ? 'FLAT' : 'SPARSE'} "${e.name}"${flat ? ' 0' : ''}`);
  const heads = adapter === 'ide' ? 16 : 255;
  const cylinders = Math.min(Math.floor(sectors / (heads * 63)), 16383);
  const desc = [
    '# Disk DescriptorFile',
    'version=1',
    `CID=${formatCid(randomInt(0, 0xffffffff))}`,
    `parentCID=${formatCid(parentCid)}`,
    `createType="${sub}"`,
    backingFile ? `parentFileNameHint="${backingFile}"` : '',
    '# Extent description',
    ...extentLines,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    `ddb.virtualHWVersion = "${hw}"`,
    `ddb.geometry.cylinders = "${cylinders}"`,
    `ddb.geometry.heads = "${heads}"`,
    'ddb.geometry.sectors = "63"',
    `ddb.adapterType = "${adapter}"`,
    'ddb.toolsVersion = "2147483647"',
    '',
  ].join('\n');

  const made: string[] = [];
  try {
    if (sub === 'monolithicSparse' || sub === 'streamOptimized') {
      made.push(file);
      await writeSparseExtent(file, sectors, { zeroed, stream: sub === 'streamOptimized', descriptor: desc });
      return;
    }
    made.push(file);
    const f = await HostFile.create(file);
    try {
      await f.write(Buffer.from(desc, 'latin1'), 0, 'descriptor');
    } finally {
      await f.close();
    }
    for (const e of extents) {
      const p = path.join(dir, e.name);
      made.push(p);
      if (flat) {
        const x = await HostFile.create(p);
        await x.truncate(e.sectors * SECTOR);
        await x.close();
      } else {
        await writeSparseExtent(p, e.sectors, { zeroed, stream: false });
      }
    }
  } catch (e) {
    await Promise.allSettled(made.map((p) => fs.unlink(p)));
    throw e;
  }
}

/**
 * A fresh hosted sparse extent laid out as qemu-img does: header, descriptor room, redundant GD
 * with its tables, GD with its tables (tables preallocated), first grain aligned to the grain size.
 */
async function writeSparseExtent(
  file: string,
  capacity: number,
  o: { zeroed: boolean; stream: boolean; descriptor?: string },
): Promise<void> {
  const grains = Math.ceil(capacity / GRAIN_SECTORS);
  const gtSectors = Math.ceil((GTES_PER_GT * 4) / SECTOR);
  const gtCount = Math.ceil(grains / GTES_PER_GT);
  const gdSectors = Math.ceil((gtCount * 4) / SECTOR);
  const descOffset = 1;
  const rgdOffset = descOffset + DESCRIPTOR_SECTORS;
  const gdOffset = rgdOffset + gdSectors + gtSectors * gtCount;
  const overHead = alignUp(gdOffset + gdSectors + gtSectors * gtCount, GRAIN_SECTORS);
  const h: hdr.SparseHeader = {
    version: o.stream ? 3 : o.zeroed ? 2 : 1,
    flags:
      hdr.FLAG_NL_DETECT | hdr.FLAG_RGD | (o.zeroed ? hdr.FLAG_ZERO_GRAIN : 0) | (o.stream ? hdr.FLAG_COMPRESSED | hdr.FLAG_MARKERS : 0),
    capacity,
    grainSize: GRAIN_SECTORS,
    descriptorOffset: descOffset,
    descriptorSize: DESCRIPTOR_SECTORS,
    numGTEsPerGT: GTES_PER_GT,
    rgdOffset,
    gdOffset,
    overHead,
    uncleanShutdown: 0,
    compressAlgorithm: o.stream ? hdr.COMPRESSION_DEFLATE : hdr.COMPRESSION_NONE,
  };
  // Grain-directory entries are 32-bit sector numbers: the tables must lie below 2^32 sectors.
  if (overHead > 0xffffffff) throw VdiskError.invalid(`vmdk: ${capacity * SECTOR} bytes is too large for a hosted sparse extent`);
  const head = Buffer.alloc((descOffset + DESCRIPTOR_SECTORS) * SECTOR);
  hdr.serialize(h).copy(head, 0);
  if (o.descriptor) {
    const d = Buffer.from(o.descriptor, 'latin1');
    if (d.length > DESCRIPTOR_SECTORS * SECTOR) throw VdiskError.invalid('vmdk: descriptor too long');
    d.copy(head, descOffset * SECTOR);
  }
  const f = await HostFile.create(file);
  try {
    // The preallocated grain tables are all zero: leave them as a hole (a 100 TiB disk has
    // 13 GB of them), as qemu-img does; write the header and both directories in bounded pieces.
    await f.truncate(overHead * SECTOR);
    await f.write(head, 0, 'header');
    const PIECE = 1 << 20; // directory entries per write (4 MiB)
    for (const [dir, firstTable] of [
      [rgdOffset, rgdOffset + gdSectors],
      [gdOffset, gdOffset + gdSectors],
    ] as const) {
      for (let i = 0; i < gtCount; i += PIECE) {
        const n = Math.min(PIECE, gtCount - i);
        const buf = Buffer.alloc(n * 4);
        for (let j = 0; j < n; j++) buf.writeUInt32LE(firstTable + (i + j) * gtSectors, j * 4);
        await f.write(buf, dir * SECTOR + i * 4, 'gd');
      }
    }
  } finally {
    await f.close();
  }
}
