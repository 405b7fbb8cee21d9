/**
 * `create -f vhdx`, with qemu-img's options: block_size (default by disk size as QEMU's
 * vhdx_create: 8 MiB up to 1 GiB, 16 MiB up to 100 GiB, 32 MiB up to 32 TiB, else 64 MiB),
 * log_size (default 1 MiB, rounded up to whole MiB), subformat=dynamic|fixed,
 * block_state_zero (default on: dynamic blocks start as ZERO, else NOT_PRESENT). With a backing
 * file: a differencing disk (HasParent, a parent locator with relative_path and parent_linkage =
 * the parent's DataWriteGuid), which qemu-img cannot make. The layout is QEMU's: header section,
 * log at 1 MiB, BAT, metadata, then the blocks.
 */
import * as path from 'node:path';
import { HostFile } from '../../io/host-file';
import { VdiskError } from '../../io/errors';
import type { CreateOptions } from '../types';
import * as bat from './bat';
import { serializeFileIdentifier } from './file-identifier';
import { newGuid, NULL_GUID } from './guid';
import { HEADER_OFFSETS, serializeHeader } from './header';
import { MAX_VIRTUAL_SIZE, serializeMetadata } from './metadata';
import { serializeParentLocator } from './parent-locator';
import { REGION_TABLE_OFFSETS, serializeRegionTable } from './region-table';

const MiB = bat.MiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

function parseSize(s: string, what: string): number {
  const m = /^(\d+)([kKmMgGtT]?)[bB]?$/.exec(s.trim());
  if (!m) throw VdiskError.invalid(`vhdx: ${what} '${s}' is not a size`);
  const mult = { '': 1, k: 1024, m: MiB, g: GiB, t: TiB }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Number(m[1]) * mult;
}

function flag(v: string | undefined, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (['on', 'true', 'yes', '1'].includes(v.toLowerCase())) return true;
  if (['off', 'false', 'no', '0'].includes(v.toLowerCase())) return false;
  throw VdiskError.invalid(`vhdx: '${v}' is not on or off`);
}

export function defaultBlockSize(size: number): number {
  if (size > 32 * TiB) return 64 * MiB;
  if (size > 100 * GiB) return 32 * MiB;
  if (size > GiB) return 16 * MiB;
  return 8 * MiB;
}

export async function createVhdx(file: string, opts: CreateOptions): Promise<void> {
  const o = opts.options;
  const known = new Set(['block_size', 'log_size', 'subformat', 'block_state_zero', 'backing_file', 'backing_fmt']);
  for (const k of Object.keys(o)) if (!known.has(k)) throw VdiskError.invalid(`vhdx: unknown option '${k}'`);
  const sub = o['subformat'] ?? 'dynamic';
  if (sub !== 'dynamic' && sub !== 'fixed') throw VdiskError.invalid(`vhdx: subformat '${sub}' (dynamic or fixed)`);
  let size = opts.size;
  let locator: Buffer | undefined;
  if (opts.backingFile) {
    if (sub === 'fixed') throw VdiskError.invalid('vhdx: a differencing disk cannot be fixed');
    const parentPath = await opts.reach(opts.backingFile, 'backing file');
    const parent = await opts.openBacking(parentPath, 'vhdx');
    try {
      const linkage = (parent as { dataWriteGuid?: string }).dataWriteGuid;
      if (parent.format !== 'vhdx' || !linkage) throw VdiskError.invalid(`vhdx: parent ${opts.backingFile} is not a VHDX disk`);
      if (!size) size = parent.virtualSize;
      const rel = path
        .relative(path.dirname(path.resolve(file)), parentPath)
        .split(path.sep)
        .join('\\');
      locator = serializeParentLocator([
        ['parent_linkage', `{${linkage}}`],
        ['relative_path', `.\\${rel}`],
        // libvhdi finds a parent only by this entry's file name; the host path, Windows-separated.
        ['absolute_win32_path', parentPath.split(path.sep).join('\\')],
      ]);
    } finally {
      await parent.close();
    }
  }
  size = Math.ceil(size / 512) * 512;
  if (!Number.isSafeInteger(size) || size <= 0 || size > MAX_VIRTUAL_SIZE)
    throw VdiskError.invalid(`vhdx: size ${size} (1 byte to 64 TiB)`);
  let blockSize = o['block_size'] ? parseSize(o['block_size'], 'block_size') : 0;
  if (blockSize === 0) blockSize = defaultBlockSize(size);
  blockSize = Math.min(Math.ceil(blockSize / MiB) * MiB, 256 * MiB);
  if ((blockSize & (blockSize - 1)) !== 0) throw VdiskError.invalid(`vhdx: block_size ${blockSize} is not a power of two`);
  const logSize = Math.max(MiB, Math.ceil((o['log_size'] ? parseSize(o['log_size'], 'log_size') : MiB) / MiB) * MiB);
  if (logSize > 4 * GiB - MiB) throw VdiskError.invalid(`vhdx: log_size ${logSize} is too large`);
  const hasParent = !!locator;
  const g = bat.batGeometry(size, blockSize, 512, hasParent);
  const batOffset = MiB + logSize;
  const batLength = Math.ceil((g.entries * 8) / MiB) * MiB;
  const metaOffset = batOffset + batLength;
  const dataOffset = metaOffset + MiB;
  const table = Buffer.alloc(batLength);
  const fixed = sub === 'fixed';
  const zeroBlocks = flag(o['block_state_zero'], true);
  for (let b = 0; b < g.payloadBlocks; b++) {
    const i = bat.payloadIndex(g, b);
    if (fixed) bat.setEntry(table, i, bat.FULLY_PRESENT, dataOffset / MiB + (b * blockSize) / MiB);
    else if (zeroBlocks && !hasParent) bat.setEntry(table, i, bat.ZERO, 0);
  }
  // A differencing disk gets its sector bitmap blocks now (zeroed: every sector from the parent):
  // libvhdi reads them for any block of a differencing disk.
  const chunks = hasParent ? Math.ceil(g.payloadBlocks / g.chunkRatio) : 0;
  for (let c = 0; c < chunks; c++) bat.setEntry(table, bat.bitmapIndex(g, c), bat.SB_PRESENT, dataOffset / MiB + c);
  const fileWriteGuid = newGuid();
  const dataWriteGuid = newGuid();
  const header = (seq: bigint) =>
    serializeHeader({
      sequenceNumber: seq,
      fileWriteGuid,
      dataWriteGuid,
      logGuid: NULL_GUID,
      logVersion: 0,
      version: 1,
      logLength: logSize,
      logOffset: MiB,
    });
  const regions = serializeRegionTable({ bat: { offset: batOffset, length: batLength }, metadata: { offset: metaOffset, length: MiB } });
  const meta = serializeMetadata(
    {
      blockSize,
      leaveBlockAllocated: fixed,
      hasParent,
      virtualSize: size,
      diskId: newGuid(),
      logicalSectorSize: 512,
      physicalSectorSize: 4096,
    },
    locator,
  );
  const f = await HostFile.create(file);
  try {
    await f.write(serializeFileIdentifier('vdiskfs'), 0, 'header');
    await f.write(regions, REGION_TABLE_OFFSETS[0], 'metadata');
    await f.write(regions, REGION_TABLE_OFFSETS[1], 'metadata');
    await f.write(table, batOffset, 'bat');
    await f.write(meta, metaOffset, 'metadata');
    await f.truncate(fixed ? dataOffset + g.payloadBlocks * blockSize : dataOffset + chunks * MiB);
    await f.write(header(0n), HEADER_OFFSETS[0], 'header');
    await f.write(header(1n), HEADER_OFFSETS[1], 'header');
    await f.datasync('header');
  } finally {
    await f.close();
  }
}
