/**
 * The Block Allocation Table ([MS-VHDX] 2.5): 64-bit little-endian entries, State in bits 0-2,
 * FileOffsetMB (the block's file offset in MiB) in bits 20-63. Payload block entries are
 * interleaved with sector bitmap entries: after every `chunkRatio` payload entries comes the
 * entry of the sector bitmap block of that chunk, chunkRatio = (2^23 * LogicalSectorSize) /
 * BlockSize. Kept in memory as the stored bytes (decoded on access), so a commit writes whole
 * 4 KiB sectors unchanged.
 */
import { VdiskError } from '../../io/errors';

/** Payload block states ([MS-VHDX] 2.5.1.1). */
export const NOT_PRESENT = 0;
export const UNDEFINED = 1;
export const ZERO = 2;
export const UNMAPPED = 3;
export const FULLY_PRESENT = 6;
export const PARTIALLY_PRESENT = 7;
/** Sector bitmap block states ([MS-VHDX] 2.5.1.2): NOT_PRESENT (0) or PRESENT (6). */
export const SB_PRESENT = 6;

export const MiB = 1 << 20;
export const BAT_SECTOR = 4096;
export const ENTRIES_PER_SECTOR = BAT_SECTOR / 8;

export interface BatGeometry {
  blockSize: number;
  logicalSectorSize: number;
  /** Payload blocks per chunk (one sector bitmap block covers a chunk). */
  chunkRatio: number;
  payloadBlocks: number;
  /** Entries in the table, sector bitmap entries included. */
  entries: number;
}

export function batGeometry(virtualSize: number, blockSize: number, logicalSectorSize: number, hasParent: boolean): BatGeometry {
  const chunkRatio = (2 ** 23 * logicalSectorSize) / blockSize;
  const payloadBlocks = Math.ceil(virtualSize / blockSize);
  const bitmapBlocks = Math.ceil(payloadBlocks / chunkRatio);
  // "For differencing VHDX files, the BAT holds a sector bitmap entry per chunk"; for others the
  // last chunk needs no trailing bitmap entry ([MS-VHDX] 2.5, TotalBatEntries).
  const entries = hasParent ? bitmapBlocks * (chunkRatio + 1) : payloadBlocks + Math.max(0, Math.floor((payloadBlocks - 1) / chunkRatio));
  return { blockSize, logicalSectorSize, chunkRatio, payloadBlocks, entries };
}

/** Entry index of payload block `block`. */
export function payloadIndex(g: BatGeometry, block: number): number {
  return block + Math.floor(block / g.chunkRatio);
}

/** Entry index of the sector bitmap block of chunk `chunk`. */
export function bitmapIndex(g: BatGeometry, chunk: number): number {
  return chunk * (g.chunkRatio + 1) + g.chunkRatio;
}

export function entryState(bat: Buffer, i: number): number {
  return bat[i * 8]! & 7;
}

/** The entry's FileOffsetMB (bits 20-63) as a number of MiB (< 2^44: always a safe integer). */
export function entryOffsetMB(bat: Buffer, i: number): number {
  const lo = bat.readUInt32LE(i * 8);
  const hi = bat.readUInt32LE(i * 8 + 4);
  return hi * 4096 + (lo >>> 20);
}

export function setEntry(bat: Buffer, i: number, state: number, offsetMB: number): void {
  if (!Number.isSafeInteger(offsetMB) || offsetMB < 0 || offsetMB >= 2 ** 44) throw VdiskError.invalid(`BAT offset ${offsetMB} MiB`);
  bat.writeUInt32LE((((offsetMB % 4096) << 20) | state) >>> 0, i * 8);
  bat.writeUInt32LE(Math.floor(offsetMB / 4096), i * 8 + 4);
}

/** True when the payload state is one [MS-VHDX] defines. */
export function isPayloadState(s: number): boolean {
  return s <= 3 || s === 6 || s === 7;
}
