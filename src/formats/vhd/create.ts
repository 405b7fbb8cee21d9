/**
 * `qemu-img create -f vpc` (options subformat=dynamic|fixed, force_size=on|off, QEMU's layout:
 * footer copy, dynamic header at 512, BAT at 1536, 2 MiB blocks) and, beyond QEMU, a
 * differencing child (`-b parent.vhd`): the parent's Unique Id and time stamp, its name in the
 * header and in a relative (W2ru) and an absolute (W2ku) locator, as Windows writes them.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { VdiskError } from '../../io/errors';
import { HostFile } from '../../io/host-file';
import type { CreateOptions } from '../types';
import { serializeDynamicHeader, SECTOR, type ParentLocator } from './dynamic-header';
import { DISK_DIFFERENCING, DISK_DYNAMIC, DISK_FIXED, FOOTER_BYTES, NO_DATA_OFFSET, serializeFooter, VHD_EPOCH } from './footer';
import { geometryOf, MAX_GEOMETRY_SECTORS, MAX_SECTORS } from './geometry';
import { readFooter } from './locate';
import { readLayout } from './vhd-image';

const BLOCK = 2 << 20;
const HEADER_AT = 512;
const BAT_AT = 1536;

export async function createVhd(file: string, opts: CreateOptions): Promise<void> {
  const o = opts.options;
  for (const k of Object.keys(o))
    if (k !== 'subformat' && k !== 'force_size') throw VdiskError.invalid(`vpc: unknown option '${k}' (subformat, force_size)`);
  const subformat = o['subformat'] ?? 'dynamic';
  if (subformat !== 'dynamic' && subformat !== 'fixed') throw VdiskError.invalid(`vpc: subformat=${subformat}: expected dynamic or fixed`);
  const forceSize = o['force_size'] === 'on' || o['force_size'] === 'true';
  let parent: { uniqueId: Buffer; timestamp: number; name: string; locators: ParentLocator[] } | undefined;
  let size = opts.size;
  let names: { relative: Buffer; absolute: Buffer } | undefined;
  if (opts.backingFile) {
    if (subformat === 'fixed') throw VdiskError.invalid('vpc: a differencing VHD cannot be fixed');
    if (opts.backingFormat && opts.backingFormat !== 'vpc')
      throw VdiskError.invalid(`vpc: the parent of a VHD must be a VHD (-F vpc), not ${opts.backingFormat}`);
    const parentPath = await opts.reach(opts.backingFile, 'parent');
    const pf = await HostFile.open(parentPath, false);
    try {
      const { footer } = await readFooter(pf);
      const l = await readLayout(pf);
      size = l.virtualSize;
      const st = await fs.stat(parentPath);
      const rel = path.relative(path.dirname(file), parentPath).split(path.sep).join('\\');
      names = { relative: Buffer.from(`.\\${rel}`, 'utf16le'), absolute: Buffer.from(parentPath.split(path.sep).join('\\'), 'utf16le') };
      parent = {
        uniqueId: footer.uniqueId,
        timestamp: Math.max(0, Math.floor(st.mtimeMs / 1000) - VHD_EPOCH),
        name: path.basename(parentPath),
        locators: [],
      };
    } finally {
      await pf.close();
    }
  }
  // Geometry: QEMU rounds the size up to whole CHS cylinders, unless force_size keeps it.
  let cyl: number, heads: number, secs: number;
  let sectors = Math.ceil(size / SECTOR);
  if (forceSize || parent) {
    ({ cylinders: cyl, heads, sectors: secs } = forceSize ? { cylinders: 65535, heads: 16, sectors: 255 } : geometryOf(sectors));
  } else {
    const want = Math.min(MAX_GEOMETRY_SECTORS, sectors);
    ({ cylinders: cyl, heads, sectors: secs } = geometryOf(want));
    for (let i = 1; cyl * heads * secs < want; i++) ({ cylinders: cyl, heads, sectors: secs } = geometryOf(want + i));
    if (cyl * heads * secs !== MAX_GEOMETRY_SECTORS) sectors = cyl * heads * secs;
  }
  if (sectors > MAX_SECTORS) throw VdiskError.invalid(`vpc: ${size} bytes is more than a VHD holds (2040 GiB)`);
  const bytes = sectors * SECTOR;
  const uniqueId = randomBytes(16);
  // A differencing child keeps its parent's size exactly: "qem2" (sized by Current Size).
  const creatorApp = forceSize || parent ? 'qem2' : 'qemu';
  const f = await HostFile.create(file);
  try {
    if (subformat === 'fixed') {
      const footer = serializeFooter({
        diskType: DISK_FIXED,
        dataOffset: NO_DATA_OFFSET,
        size: bytes,
        cylinders: cyl,
        heads,
        sectors: secs,
        creatorApp,
        uniqueId,
      });
      await f.truncate(bytes);
      await f.write(footer, bytes, 'footer');
    } else {
      const entries = Math.ceil(bytes / BLOCK);
      const batBytes = Math.ceil((entries * 4) / SECTOR) * SECTOR;
      let end = BAT_AT + batBytes;
      const locatorData: Array<[number, Buffer]> = [];
      if (parent && names) {
        for (const [code, data] of [
          ['W2ru', names.relative],
          ['W2ku', names.absolute],
        ] as const) {
          const space = Math.ceil(data.length / SECTOR) * SECTOR;
          parent.locators.push({ code, space, length: data.length, offset: end });
          locatorData.push([end, data]);
          end += space;
        }
      }
      const diskType = parent ? DISK_DIFFERENCING : DISK_DYNAMIC;
      const footer = serializeFooter({
        diskType,
        dataOffset: BigInt(HEADER_AT),
        size: bytes,
        cylinders: cyl,
        heads,
        sectors: secs,
        creatorApp,
        uniqueId,
      });
      const header = serializeDynamicHeader({ tableOffset: BAT_AT, maxTableEntries: entries, blockSize: BLOCK, parent });
      await f.write([footer, header, Buffer.alloc(batBytes, 0xff)], 0, 'header');
      for (const [at, data] of locatorData) await f.write(data, at, 'header');
      await f.write(footer, end, 'footer');
      await f.truncate(end + FOOTER_BYTES);
    }
    await f.datasync('flush');
  } finally {
    await f.close();
  }
}
