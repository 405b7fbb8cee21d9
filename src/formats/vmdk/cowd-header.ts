import { VdiskError } from '../../io/errors';
import type { SparseHeader } from './sparse-header';

/**
 * The COWD header of ESX 2.x / vmfsSparse delta extents (VMDK3 in QEMU's words): little-endian
 * u32 fields after the 'COWD' magic. It maps like a hosted sparse extent with 4096-entry grain
 * tables and no redundant directory; we read it and never write it.
 */
export const MAGIC = 'COWD';
export const SIZE = 44;
export const GTES_PER_GT = 4096;

export interface CowdHeader {
  version: number;
  flags: number;
  diskSectors: number; // guest sectors of this extent
  granularity: number; // sectors per grain
  l1dirOffset: number; // sector of the grain directory
  l1dirSize: number; // grain directory entries
  fileSectors: number;
}

export function parse(buf: Buffer): CowdHeader {
  if (buf.length < SIZE || buf.toString('latin1', 0, 4) !== MAGIC) throw VdiskError.corrupt('not a COWD extent');
  return {
    version: buf.readUInt32LE(4),
    flags: buf.readUInt32LE(8),
    diskSectors: buf.readUInt32LE(12),
    granularity: buf.readUInt32LE(16),
    l1dirOffset: buf.readUInt32LE(20),
    l1dirSize: buf.readUInt32LE(24),
    fileSectors: buf.readUInt32LE(28),
  };
}

/** The same mapping described as a hosted sparse header (no RGD, no zeroed grains, not compressed). */
export function asSparseHeader(c: CowdHeader): SparseHeader {
  return {
    version: 1,
    flags: 0,
    capacity: c.diskSectors,
    grainSize: c.granularity,
    descriptorOffset: 0,
    descriptorSize: 0,
    numGTEsPerGT: GTES_PER_GT,
    rgdOffset: 0,
    gdOffset: c.l1dirOffset,
    overHead: 0,
    uncleanShutdown: 0,
    compressAlgorithm: 0,
  };
}
