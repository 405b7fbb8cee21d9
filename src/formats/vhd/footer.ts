/**
 * The VHD hard disk footer (Microsoft "Virtual Hard Disk Image Format Specification", "Hard Disk
 * Footer Format"): 512 bytes, big-endian, at the end of every VHD and, for dynamic and
 * differencing disks, copied at offset 0. Checked here before anything is sized from it.
 */
import { VdiskError } from '../../io/errors';

export const FOOTER_BYTES = 512;
export const COOKIE = 'conectix';
/** Disk Type. */
export const DISK_FIXED = 2;
export const DISK_DYNAMIC = 3;
export const DISK_DIFFERENCING = 4;
/** Data Offset of a fixed disk: there is no dynamic header. */
export const NO_DATA_OFFSET = 0xffffffffffffffffn;
/** Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC). */
export const VHD_EPOCH = 946684800;

const OFF = {
  cookie: 0, // "conectix"
  features: 8, // 0x2: reserved, always set
  version: 12, // File Format Version 0x00010000
  dataOffset: 16, // u64: the dynamic header's offset; all ones for a fixed disk
  timestamp: 24, // seconds since 2000-01-01 UTC
  creatorApp: 28, // "vpc ", "qemu", "win ", "d2v " ...
  creatorVersion: 32,
  creatorOs: 36, // "Wi2k", "Mac "
  originalSize: 40, // u64: size at creation
  currentSize: 48, // u64: the disk's size now
  cylinders: 56, // u16 Disk Geometry
  heads: 58, // u8
  sectors: 59, // u8 sectors per track
  diskType: 60,
  checksum: 64, // one's complement of the byte sum, this field as zero
  uniqueId: 68, // 16 bytes: the identity differencing children name
  savedState: 84,
} as const;

export interface VhdFooter {
  creatorApp: string;
  dataOffset: bigint;
  originalSize: bigint;
  currentSize: bigint;
  cylinders: number;
  heads: number;
  sectors: number;
  diskType: number;
  uniqueId: Buffer;
  timestamp: number;
  /** The footer's bytes as read (written back unchanged when it moves). */
  raw: Buffer;
}

export function hasCookie(buf: Buffer, at = 0): boolean {
  return buf.length >= at + 8 && buf.toString('latin1', at, at + 8) === COOKIE;
}

/** One's complement of the sum of every byte, `skip` (the checksum field itself) counted as zero. */
export function vhdChecksum(buf: Buffer, skip: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) if (i < skip || i >= skip + 4) sum += buf[i]!;
  return ~sum >>> 0;
}

/** Parses a footer; null when the bytes are not one (no cookie, or a bad checksum). */
export function parseFooter(buf: Buffer, file: string): VhdFooter | null {
  if (buf.length < FOOTER_BYTES || !hasCookie(buf)) return null;
  const raw = Buffer.from(buf.subarray(0, FOOTER_BYTES));
  if (vhdChecksum(raw, OFF.checksum) !== raw.readUInt32BE(OFF.checksum)) return null;
  const diskType = raw.readUInt32BE(OFF.diskType);
  if (diskType !== DISK_FIXED && diskType !== DISK_DYNAMIC && diskType !== DISK_DIFFERENCING)
    throw VdiskError.unsupported(`${file}: VHD disk type ${diskType} is not fixed, dynamic or differencing`);
  return {
    creatorApp: raw.toString('latin1', OFF.creatorApp, OFF.creatorApp + 4),
    dataOffset: raw.readBigUInt64BE(OFF.dataOffset),
    originalSize: raw.readBigUInt64BE(OFF.originalSize),
    currentSize: raw.readBigUInt64BE(OFF.currentSize),
    cylinders: raw.readUInt16BE(OFF.cylinders),
    heads: raw[OFF.heads]!,
    sectors: raw[OFF.sectors]!,
    diskType,
    uniqueId: Buffer.from(raw.subarray(OFF.uniqueId, OFF.uniqueId + 16)),
    timestamp: raw.readUInt32BE(OFF.timestamp),
    raw,
  };
}

export interface NewFooter {
  diskType: number;
  dataOffset: bigint;
  size: number;
  cylinders: number;
  heads: number;
  sectors: number;
  creatorApp: string;
  uniqueId: Buffer;
}

/** A footer as qemu-img create -f vpc writes it (creator "qemu"/"qem2" 5.3 on "Wi2k"). */
export function serializeFooter(f: NewFooter): Buffer {
  const b = Buffer.alloc(FOOTER_BYTES);
  b.write(COOKIE, OFF.cookie, 'latin1');
  b.writeUInt32BE(2, OFF.features);
  b.writeUInt32BE(0x00010000, OFF.version);
  b.writeBigUInt64BE(f.dataOffset, OFF.dataOffset);
  b.writeUInt32BE(Math.max(0, Math.floor(Date.now() / 1000) - VHD_EPOCH) >>> 0, OFF.timestamp);
  b.write(f.creatorApp.padEnd(4).slice(0, 4), OFF.creatorApp, 'latin1');
  b.writeUInt32BE(0x00050003, OFF.creatorVersion);
  b.write('Wi2k', OFF.creatorOs, 'latin1');
  b.writeBigUInt64BE(BigInt(f.size), OFF.originalSize);
  b.writeBigUInt64BE(BigInt(f.size), OFF.currentSize);
  b.writeUInt16BE(f.cylinders, OFF.cylinders);
  b[OFF.heads] = f.heads;
  b[OFF.sectors] = f.sectors;
  b.writeUInt32BE(f.diskType, OFF.diskType);
  f.uniqueId.copy(b, OFF.uniqueId);
  b.writeUInt32BE(vhdChecksum(b, OFF.checksum), OFF.checksum);
  return b;
}
