import { VdiskError } from '../../io/errors';
import { toSafeNumber } from '../../io/safe-int';

/**
 * The hosted sparse extent header (VMware "Virtual Disk Format 5.0", SparseExtentHeader):
 * 512 bytes, little-endian, at sector 0 of every SPARSE extent file (and, as a copy, in the
 * footer of a streamOptimized file).
 */
export const SIZE = 512;
export const MAGIC = 0x564d444b; // 'KDMV' read as a little-endian u32
export const SECTOR = 512;

export const FLAG_NL_DETECT = 1 << 0; // "valid new line detection test"
export const FLAG_RGD = 1 << 1; // "redundant grain table will be used"
export const FLAG_ZERO_GRAIN = 1 << 2; // zeroed-grain GTE (value 1) allowed
export const FLAG_COMPRESSED = 1 << 16; // "grains are compressed"
export const FLAG_MARKERS = 1 << 17; // "there are markers in the virtual disk"
/** Grain table entry meaning "this grain reads as zeros" when FLAG_ZERO_GRAIN is set. */
export const GTE_ZEROED = 1;

export const COMPRESSION_NONE = 0;
export const COMPRESSION_DEFLATE = 1;
/** gdOffset value meaning "the grain directory is at the end; read the footer" (streamOptimized). */
export const GD_AT_END = 0xffffffffffffffffn;

export interface SparseHeader {
  version: number; // 1, 2 (zeroed grains) or 3 (ESXi / streamOptimized)
  flags: number;
  capacity: number; // sectors of guest data in this extent
  grainSize: number; // sectors per grain
  descriptorOffset: number; // sectors; 0 = no embedded descriptor
  descriptorSize: number; // sectors
  numGTEsPerGT: number; // grain table entries per grain table (512)
  rgdOffset: number; // sectors: redundant grain directory
  gdOffset: number; // sectors: grain directory; -1 = at end (footer)
  overHead: number; // sectors of metadata before the first grain
  uncleanShutdown: number;
  compressAlgorithm: number;
}

function u64(buf: Buffer, off: number, field: string): number {
  return toSafeNumber(buf.readBigUInt64LE(off), field);
}

export function parse(buf: Buffer, off = 0): SparseHeader {
  if (buf.length < off + 80) throw VdiskError.corrupt('sparse extent header truncated');
  if (buf.readUInt32LE(off) !== MAGIC) throw VdiskError.corrupt('not a VMDK sparse extent (bad magic)');
  const gdRaw = buf.readBigUInt64LE(off + 56);
  return {
    version: buf.readUInt32LE(off + 4),
    flags: buf.readUInt32LE(off + 8),
    capacity: u64(buf, off + 12, 'capacity'),
    grainSize: u64(buf, off + 20, 'grainSize'),
    descriptorOffset: u64(buf, off + 28, 'descriptorOffset'),
    descriptorSize: u64(buf, off + 36, 'descriptorSize'),
    numGTEsPerGT: buf.readUInt32LE(off + 44),
    rgdOffset: u64(buf, off + 48, 'rgdOffset'),
    gdOffset: gdRaw === GD_AT_END ? -1 : toSafeNumber(gdRaw, 'gdOffset'),
    overHead: u64(buf, off + 64, 'overHead'),
    uncleanShutdown: buf.readUInt8(off + 72),
    compressAlgorithm: buf.readUInt16LE(off + 77),
  };
}

export function serialize(h: SparseHeader): Buffer {
  const b = Buffer.alloc(SIZE);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt32LE(h.version, 4);
  b.writeUInt32LE(h.flags >>> 0, 8);
  b.writeBigUInt64LE(BigInt(h.capacity), 12);
  b.writeBigUInt64LE(BigInt(h.grainSize), 20);
  b.writeBigUInt64LE(BigInt(h.descriptorOffset), 28);
  b.writeBigUInt64LE(BigInt(h.descriptorSize), 36);
  b.writeUInt32LE(h.numGTEsPerGT, 44);
  b.writeBigUInt64LE(BigInt(h.rgdOffset), 48);
  b.writeBigUInt64LE(h.gdOffset < 0 ? GD_AT_END : BigInt(h.gdOffset), 56);
  b.writeBigUInt64LE(BigInt(h.overHead), 64);
  b.writeUInt8(h.uncleanShutdown, 72);
  // The newline-detection characters: a file mangled by a text-mode transfer is caught by these.
  b.write('\n \r\n', 73, 'latin1');
  b.writeUInt16LE(h.compressAlgorithm, 77);
  return b;
}

/** Sanity limits against hostile headers (QEMU refuses comparable values). */
const MAX_GRAIN_SECTORS = 1 << 17; // 64 MiB grains
const MAX_GTES_PER_GT = 1 << 16;

/** Grain geometry, capacity and compression a reader can work with (checked at open, header or footer). */
export function checkGeometry(h: SparseHeader, fileName: string): void {
  if (h.grainSize < 1 || h.grainSize > MAX_GRAIN_SECTORS)
    throw VdiskError.corrupt(`${fileName}: invalid grain size ${h.grainSize} sectors`);
  if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > MAX_GTES_PER_GT)
    throw VdiskError.corrupt(`${fileName}: invalid numGTEsPerGT ${h.numGTEsPerGT}`);
  if (h.capacity * SECTOR > Number.MAX_SAFE_INTEGER) throw VdiskError.corrupt(`${fileName}: capacity too big`);
  if (h.flags & FLAG_COMPRESSED && h.compressAlgorithm !== COMPRESSION_DEFLATE) {
    throw VdiskError.unsupported(`${fileName}: compression algorithm ${h.compressAlgorithm} is not supported`);
  }
}
