import { VdiskError } from '../../io/errors';
import { toSafeNumber } from '../../io/safe-int';

/**
 * streamOptimized markers (Virtual Disk Format 5.0, "Stream-Optimized Compressed Sparse
 * Extents"). A grain marker is {u64 lba, u32 size, data[size]}; with size 0 it is a metadata
 * marker {u64 numSectors, u32 size=0, u32 type, pad to 512} followed by numSectors of metadata.
 */
export const GRAIN_MARKER_SIZE = 12;
export const MARKER_SIZE = 512;

export const TYPE_EOS = 0; // end of stream
export const TYPE_GT = 1; // a grain table follows
export const TYPE_GD = 2; // the grain directory follows
export const TYPE_FOOTER = 3; // a copy of the header follows

export interface GrainMarker {
  /**
   * Guest sector of the grain (relative to the extent), as written: it repeats what the grain
   * table says and readers do not trust it (QEMU never reads it), so any value parses.
   */
  lba: bigint;
  size: number; // bytes of compressed data after the 12-byte marker
}

export function parseGrainMarker(buf: Buffer, off = 0): GrainMarker {
  return { lba: buf.readBigUInt64LE(off), size: buf.readUInt32LE(off + 8) };
}

export function serializeGrainMarker(lbaSectors: number, size: number): Buffer {
  const b = Buffer.alloc(GRAIN_MARKER_SIZE);
  b.writeBigUInt64LE(BigInt(lbaSectors), 0);
  b.writeUInt32LE(size, 8);
  return b;
}

export interface MetaMarker {
  numSectors: number;
  type: number;
}

export function parseMetaMarker(buf: Buffer, off = 0): MetaMarker {
  if (buf.readUInt32LE(off + 8) !== 0) throw VdiskError.corrupt('expected a metadata marker, found a grain marker');
  return { numSectors: toSafeNumber(buf.readBigUInt64LE(off), 'marker numSectors'), type: buf.readUInt32LE(off + 12) };
}

export function serializeMetaMarker(numSectors: number, type: number): Buffer {
  const b = Buffer.alloc(MARKER_SIZE);
  b.writeBigUInt64LE(BigInt(numSectors), 0);
  b.writeUInt32LE(0, 8);
  b.writeUInt32LE(type, 12);
  return b;
}
