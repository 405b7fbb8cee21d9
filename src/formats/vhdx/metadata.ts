/**
 * The metadata region ([MS-VHDX] 2.2.4, 2.6): a 64 KiB table ("metadata", EntryCount at most
 * 2047, 32-byte entries: ItemId, Offset and Length within the region, IsUser / IsVirtualDisk /
 * IsRequired bits) and the items it points at. "If IsRequired is set and the item is not
 * recognized, the implementation MUST fail to load the file."
 */
import { VdiskError } from '../../io/errors';
import { readU64, writeU64 } from '../../io/safe-int';
import { guidBytes, guidText } from './guid';
import { parseParentLocator, type ParentLocator } from './parent-locator';

export const METADATA_TABLE_SIZE = 64 * 1024;
const MAGIC = 'metadata';
const MAX_ENTRIES = 2047;
const MiB = 1 << 20;
const TiB = 2 ** 40;
/** "The maximum size of a virtual disk is 64 TB" ([MS-VHDX] 2.6.2.2). */
export const MAX_VIRTUAL_SIZE = 64 * TiB;

export const FILE_PARAMETERS = guidBytes('CAA16737-FA36-4D43-B3B6-33F0AA44E76B');
export const VIRTUAL_DISK_SIZE = guidBytes('2FA54224-CD1B-4876-B211-5DBED83BF4B8');
export const VIRTUAL_DISK_ID = guidBytes('BECA12AB-B2E6-4523-93EF-C309E000C746');
export const LOGICAL_SECTOR_SIZE = guidBytes('8141BF1D-A96F-4709-BA47-F233A8FAAB5F');
export const PHYSICAL_SECTOR_SIZE = guidBytes('CDA348C7-445D-4471-9CC9-E9885251C556');
export const PARENT_LOCATOR = guidBytes('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C');

const IS_VIRTUAL_DISK = 2;
const IS_REQUIRED = 4;

export interface VhdxMetadata {
  /** File Parameters: BlockSize, "at least 1 MB and not greater than 256 MB, a power of 2". */
  blockSize: number;
  /** File Parameters: LeaveBlockAllocated (a fixed disk: blocks stay allocated). */
  leaveBlockAllocated: boolean;
  /** File Parameters: HasParent (a differencing disk: the Parent Locator item must be present). */
  hasParent: boolean;
  /** Virtual Disk Size in bytes, a multiple of the logical sector size. */
  virtualSize: number;
  /** Virtual Disk ID (page 83 data). */
  diskId: Buffer;
  /** Logical Sector Size: 512 or 4096. */
  logicalSectorSize: number;
  /** Physical Sector Size: 512 or 4096. */
  physicalSectorSize: number;
  parentLocator: ParentLocator | undefined;
}

const KNOWN = [FILE_PARAMETERS, VIRTUAL_DISK_SIZE, VIRTUAL_DISK_ID, LOGICAL_SECTOR_SIZE, PHYSICAL_SECTOR_SIZE, PARENT_LOCATOR];

export interface MetadataEntry {
  id: Buffer;
  /** Offset from the start of the region, at least 64 KiB (past the table) when Length > 0. */
  offset: number;
  /** At most 1 MiB. */
  length: number;
  known: boolean;
}

/** The table's entries (from its 64 KiB), checked against the region's length; unknown required items refused. */
export function metadataEntries(file: string, table: Buffer, regionLength: number): MetadataEntry[] {
  if (table.toString('latin1', 0, 8) !== MAGIC) throw VdiskError.corrupt(`${file}: metadata region lacks its "metadata" signature`);
  const count = table.readUInt16LE(10);
  if (count > MAX_ENTRIES) throw VdiskError.corrupt(`${file}: metadata table lists ${count} entries (at most ${MAX_ENTRIES})`);
  const out: MetadataEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = 32 + i * 32;
    const id = Buffer.from(table.subarray(at, at + 16));
    const offset = table.readUInt32LE(at + 16);
    const length = table.readUInt32LE(at + 20);
    const flags = table.readUInt32LE(at + 24);
    if (length > 0 && (offset < METADATA_TABLE_SIZE || offset + length > regionLength || length > MiB))
      throw VdiskError.corrupt(`${file}: metadata item ${guidText(id)} at ${offset}+${length} lies outside its region`);
    const known = KNOWN.some((g) => g.equals(id));
    if (!known && flags & IS_REQUIRED) throw VdiskError.unsupported(`${file}: required metadata item ${guidText(id)} is unknown`);
    out.push({ id, offset, length, known });
  }
  return out;
}

/** Parses the metadata of a whole region held in memory. */
export function parseMetadataRegion(file: string, region: Buffer): VhdxMetadata {
  return parseMetadata(file, region.subarray(0, METADATA_TABLE_SIZE), region.length, (o, l) => region.subarray(o, o + l));
}

/** Parses the table and its known items; `item(offset, length)` gives an item's bytes (read beforehand). */
export function parseMetadata(
  file: string,
  table: Buffer,
  regionLength: number,
  item0: (offset: number, length: number) => Buffer,
): VhdxMetadata {
  const items = new Map<string, Buffer>();
  for (const e of metadataEntries(file, table, regionLength)) if (e.known) items.set(e.id.toString('hex'), item0(e.offset, e.length));
  const item = (g: Buffer, name: string, min: number): Buffer => {
    const b = items.get(g.toString('hex'));
    if (!b) throw VdiskError.corrupt(`${file}: metadata lacks the ${name} item`);
    if (b.length < min) throw VdiskError.corrupt(`${file}: metadata item ${name} holds ${b.length} bytes, needs ${min}`);
    return b;
  };
  const fp = item(FILE_PARAMETERS, 'File Parameters', 8);
  const blockSize = fp.readUInt32LE(0);
  if (blockSize < MiB || blockSize > 256 * MiB || (blockSize & (blockSize - 1)) !== 0)
    throw VdiskError.corrupt(`${file}: block size ${blockSize} is not a power of two from 1 MiB to 256 MiB`);
  const fpFlags = fp.readUInt32LE(4);
  const logicalSectorSize = item(LOGICAL_SECTOR_SIZE, 'Logical Sector Size', 4).readUInt32LE(0);
  const physicalSectorSize = item(PHYSICAL_SECTOR_SIZE, 'Physical Sector Size', 4).readUInt32LE(0);
  if (logicalSectorSize !== 512 && logicalSectorSize !== 4096)
    throw VdiskError.corrupt(`${file}: logical sector size ${logicalSectorSize} (512 or 4096)`);
  if (physicalSectorSize !== 512 && physicalSectorSize !== 4096)
    throw VdiskError.corrupt(`${file}: physical sector size ${physicalSectorSize} (512 or 4096)`);
  const virtualSize = readU64(item(VIRTUAL_DISK_SIZE, 'Virtual Disk Size', 8), 0, 'Virtual Disk Size', false);
  if (virtualSize > MAX_VIRTUAL_SIZE || virtualSize % logicalSectorSize !== 0)
    throw VdiskError.corrupt(`${file}: virtual disk size ${virtualSize} is not a multiple of ${logicalSectorSize} up to 64 TiB`);
  const hasParent = (fpFlags & 2) !== 0;
  const pl = items.get(PARENT_LOCATOR.toString('hex'));
  if (hasParent && !pl) throw VdiskError.corrupt(`${file}: differencing disk (HasParent) without a parent locator`);
  return {
    blockSize,
    leaveBlockAllocated: (fpFlags & 1) !== 0,
    hasParent,
    virtualSize,
    diskId: Buffer.from(item(VIRTUAL_DISK_ID, 'Virtual Disk ID', 16).subarray(0, 16)),
    logicalSectorSize,
    physicalSectorSize,
    parentLocator: hasParent && pl ? parseParentLocator(file, pl) : undefined,
  };
}

/** The whole metadata region (1 MiB) for a new image; `parentLocator` is its serialized item. */
export function serializeMetadata(m: Omit<VhdxMetadata, 'parentLocator'>, parentLocator?: Buffer): Buffer {
  const b = Buffer.alloc(MiB);
  b.write(MAGIC, 0, 'latin1');
  const entries: Array<[Buffer, Buffer, number]> = [];
  const fp = Buffer.alloc(8);
  fp.writeUInt32LE(m.blockSize, 0);
  fp.writeUInt32LE((m.leaveBlockAllocated ? 1 : 0) | (m.hasParent ? 2 : 0), 4);
  entries.push([FILE_PARAMETERS, fp, IS_REQUIRED]);
  const vs = Buffer.alloc(8);
  writeU64(vs, 0, m.virtualSize, false);
  entries.push([VIRTUAL_DISK_SIZE, vs, IS_REQUIRED | IS_VIRTUAL_DISK]);
  entries.push([VIRTUAL_DISK_ID, m.diskId, IS_REQUIRED | IS_VIRTUAL_DISK]);
  const ls = Buffer.alloc(4);
  ls.writeUInt32LE(m.logicalSectorSize, 0);
  entries.push([LOGICAL_SECTOR_SIZE, ls, IS_REQUIRED | IS_VIRTUAL_DISK]);
  const ps = Buffer.alloc(4);
  ps.writeUInt32LE(m.physicalSectorSize, 0);
  entries.push([PHYSICAL_SECTOR_SIZE, ps, IS_REQUIRED | IS_VIRTUAL_DISK]);
  if (parentLocator) entries.push([PARENT_LOCATOR, parentLocator, IS_REQUIRED]);
  b.writeUInt16LE(entries.length, 10);
  let off = METADATA_TABLE_SIZE;
  entries.forEach(([id, data, flags], i) => {
    const at = 32 + i * 32;
    id.copy(b, at);
    b.writeUInt32LE(off, at + 16);
    b.writeUInt32LE(data.length, at + 20);
    b.writeUInt32LE(flags, at + 24);
    data.copy(b, off);
    off += Math.ceil(data.length / 8) * 8;
  });
  return b;
}
