/**
 * Opening a VHD: footer (fixed, dynamic, differencing), size by QEMU's rules (geometry.ts), the
 * dynamic header and BAT, a differencing disk's sector bitmaps and parent. The bytes move through
 * the shared block engine (../blocks/block-image.ts).
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import createDebug from 'debug';
import { VdiskError } from '../../io/errors';
import { HostFile } from '../../io/host-file';
import { BlockImage } from '../blocks/block-image';
import type { BlockTable } from '../blocks/block-table';
import type { Image, ImageInfo, OpenOptions } from '../types';
import { bitmapBytesFor, VhdBat } from './bat';
import { FixedDisk } from './fixed-disk';
import { BAT_UNUSED, HEADER_BYTES, parseDynamicHeader, SECTOR, type DynamicHeader } from './dynamic-header';
import { DISK_DIFFERENCING, DISK_DYNAMIC, DISK_FIXED, FOOTER_BYTES, type VhdFooter } from './footer';
import { diskSectors, MAX_SECTORS } from './geometry';
import { findParent, guid, readFooter } from './locate';

const log = createDebug('vdiskfs:vhd');

const TYPE_NAMES: Record<number, string> = { [DISK_FIXED]: 'fixed', [DISK_DYNAMIC]: 'dynamic', [DISK_DIFFERENCING]: 'differencing' };

export interface VhdLayout {
  footer: VhdFooter;
  fileSize: number;
  virtualSize: number;
  header?: DynamicHeader;
  bat?: Buffer;
  /** Where the next block goes. */
  freeOffset: number;
}

/** Footer, size, dynamic header and BAT, checked: no block may overlap the metadata or another block. */
export async function readLayout(f: HostFile): Promise<VhdLayout> {
  const { footer, fileSize } = await readFooter(f);
  const sectors = diskSectors(footer);
  if (sectors > MAX_SECTORS) throw VdiskError.unsupported(`${f.path}: a VHD larger than 2040 GiB (${sectors} sectors) is not supported`);
  const virtualSize = sectors * SECTOR;
  if (footer.diskType === DISK_FIXED) {
    if (virtualSize > fileSize - FOOTER_BYTES)
      throw VdiskError.corrupt(`${f.path}: fixed VHD of ${virtualSize} bytes holds only ${fileSize - FOOTER_BYTES} bytes of data`);
    return { footer, fileSize, virtualSize, freeOffset: fileSize };
  }
  if (footer.dataOffset > BigInt(fileSize - HEADER_BYTES))
    throw VdiskError.corrupt(`${f.path}: VHD dynamic header offset ${footer.dataOffset} is past the end of the file`);
  const at = Number(footer.dataOffset);
  const hb = Buffer.alloc(HEADER_BYTES);
  await f.read(hb, at, 'header');
  const header = parseDynamicHeader(hb, f.path, fileSize);
  if (header.maxTableEntries * header.blockSize < virtualSize)
    throw VdiskError.corrupt(
      `${f.path}: VHD BAT of ${header.maxTableEntries} blocks of ${header.blockSize} is smaller than the disk (${virtualSize})`,
    );
  const batBytes = Math.ceil((header.maxTableEntries * 4) / SECTOR) * SECTOR;
  const bat = Buffer.alloc(batBytes);
  await f.read(bat, header.tableOffset, 'bat');
  // Metadata the blocks must stay clear of: footer copy, dynamic header, BAT, locator data.
  const meta: Array<[number, number, string]> = [
    [0, FOOTER_BYTES, 'the footer copy'],
    [at, at + HEADER_BYTES, 'the dynamic header'],
    [header.tableOffset, header.tableOffset + batBytes, 'the BAT'],
    ...header.locators.map((l): [number, number, string] => [
      l.offset,
      l.offset + Math.ceil(l.length / SECTOR) * SECTOR,
      `parent locator ${l.code}`,
    ]),
  ];
  let freeOffset = Math.max(...meta.map((m) => m[1]));
  const span = bitmapBytesFor(header.blockSize) + header.blockSize;
  const blocks: Array<[number, number]> = [];
  for (let b = 0; b < header.maxTableEntries; b++) {
    const e = bat.readUInt32BE(b * 4);
    if (e === BAT_UNUSED) continue;
    const start = e * SECTOR;
    for (const [s, t, what] of meta)
      if (start < t && s < start + span) throw VdiskError.corrupt(`${f.path}: VHD block ${b} at ${start} overlaps ${what}`);
    blocks.push([start, b]);
    freeOffset = Math.max(freeOffset, start + span);
  }
  blocks.sort((x, y) => x[0] - y[0]);
  for (let i = 1; i < blocks.length; i++)
    if (blocks[i]![0] < blocks[i - 1]![0] + span)
      throw VdiskError.corrupt(`${f.path}: VHD blocks ${blocks[i - 1]![1]} and ${blocks[i]![1]} overlap`);
  return { footer, fileSize, virtualSize, header, bat, freeOffset };
}

export async function openVhd(file: string, opts: OpenOptions): Promise<Image> {
  const f = await HostFile.open(file, opts.writable);
  let parent: Image | undefined;
  try {
    const layout = await readLayout(f);
    const { footer, header } = layout;
    let table: BlockTable;
    let parentFile: string | undefined;
    if (footer.diskType === DISK_FIXED || !header) {
      table = new FixedDisk(f, layout.virtualSize);
    } else {
      let bitmaps: Map<number, Buffer> | undefined;
      if (footer.diskType === DISK_DIFFERENCING) {
        const found = await findParent(file, f, header, opts.reach);
        parentFile = found.file;
        parent = await opts.openBacking(found.file, 'vpc');
        bitmaps = await readBitmaps(f, header, layout.bat!);
      }
      table = new VhdBat(f, header, layout.virtualSize, layout.bat!, footer.raw, layout.freeOffset, bitmaps, layout.fileSize);
    }
    log('open %s: %s, %d bytes, parent %s', file, TYPE_NAMES[footer.diskType], layout.virtualSize, parentFile ?? '-');
    return new BlockImage({
      format: 'vpc',
      path: file,
      table,
      parent,
      readOnly: !opts.writable,
      info: (img) => vhdInfo(img, layout, parentFile, parent),
      close: () => f.close(),
    });
  } catch (e) {
    await parent?.close().catch(() => {});
    await f.close().catch(() => {});
    throw e;
  }
}

/** Every stored block's sector bitmap (a differencing disk reads its parent where a bit is clear). */
async function readBitmaps(f: HostFile, h: DynamicHeader, bat: Buffer): Promise<Map<number, Buffer>> {
  const out = new Map<number, Buffer>();
  const bytes = bitmapBytesFor(h.blockSize);
  const pending: Promise<unknown>[] = [];
  for (let b = 0; b < h.maxTableEntries; b++) {
    const e = bat.readUInt32BE(b * 4);
    if (e === BAT_UNUSED) continue;
    const bm = Buffer.alloc(bytes);
    out.set(b, bm);
    pending.push(f.read(bm, e * SECTOR, 'bitmap'));
    if (pending.length >= 64) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
  return out;
}

async function vhdInfo(img: BlockImage, l: VhdLayout, parentFile: string | undefined, parent: Image | undefined): Promise<ImageInfo> {
  const st = await fs.stat(img.path);
  const f = l.footer;
  return {
    filename: img.path,
    format: 'vpc',
    'virtual-size': img.virtualSize,
    'actual-size': st.blocks * 512,
    ...(l.header ? { 'cluster-size': l.header.blockSize } : {}),
    ...(parentFile
      ? { 'backing-filename': path.basename(parentFile), 'full-backing-filename': parentFile, 'backing-filename-format': 'vpc' }
      : {}),
    'format-specific': {
      type: 'vpc',
      data: {
        subformat: TYPE_NAMES[f.diskType],
        'creator-app': f.creatorApp.replace(/\0/g, '').trim(),
        'current-size': Number(f.currentSize),
        geometry: `${f.cylinders}/${f.heads}/${f.sectors}`,
        'unique-id': guid(f.uniqueId),
        ...(l.header && f.diskType === DISK_DIFFERENCING ? { 'parent-unique-id': guid(l.header.parentUniqueId) } : {}),
      },
    },
    ...(parent ? { 'backing-image': await parent.info() } : {}),
  };
}
