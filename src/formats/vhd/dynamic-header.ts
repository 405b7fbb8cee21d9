/**
 * The VHD dynamic disk header ("Dynamic Disk Header Format"): 1024 bytes, big-endian, at the
 * footer's Data Offset; where the BAT is, how many entries it has, the block size and, for a
 * differencing disk, the parent's identity and the parent locators.
 */
import { VdiskError } from '../../io/errors';
import { vhdChecksum } from './footer';

export const SECTOR = 512;
export const HEADER_BYTES = 1024;
export const HEADER_COOKIE = 'cxsparse';
/** BAT entry of a block not stored. */
export const BAT_UNUSED = 0xffffffff;
/** A BAT bigger than this is not a disk anyone made (16 Mi entries: 32 TiB at 2 MiB). */
export const MAX_ENTRIES = 16 << 20;
export const MAX_BLOCK_SIZE = 256 << 20;

const OFF = {
  cookie: 0, // "cxsparse"
  dataOffset: 8, // unused, all ones
  tableOffset: 16, // u64: absolute offset of the BAT
  version: 24, // 0x00010000
  maxTableEntries: 28, // BAT entries
  blockSize: 32, // bytes of data per block (2 MiB by default), not counting its sector bitmap
  checksum: 36,
  parentUniqueId: 40, // differencing: the parent footer's Unique Id
  parentTimestamp: 56, // differencing: the parent's modification time
  parentUnicodeName: 64, // 512 bytes, UTF-16 big-endian
  locators: 576, // 8 entries of 24 bytes
} as const;

export interface ParentLocator {
  /** Platform Code: 'W2ru' (relative Windows path), 'W2ku' (absolute), 'Wi2r', 'Wi2k', 'Mac ', 'MacX'. */
  code: string;
  /** Platform Data Space (sectors by the spec; some tools write bytes). */
  space: number;
  length: number; // Platform Data Length, bytes
  offset: number; // Platform Data Offset, absolute
}

export interface DynamicHeader {
  tableOffset: number;
  maxTableEntries: number;
  blockSize: number;
  parentUniqueId: Buffer;
  parentTimestamp: number;
  parentName: string;
  locators: ParentLocator[];
}

export function parseDynamicHeader(buf: Buffer, file: string, fileSize: number): DynamicHeader {
  const bad = (why: string) => VdiskError.corrupt(`${file}: VHD dynamic header ${why}`);
  if (buf.length < HEADER_BYTES || buf.toString('latin1', 0, 8) !== HEADER_COOKIE) throw bad("has no 'cxsparse' cookie");
  if (vhdChecksum(buf.subarray(0, HEADER_BYTES), OFF.checksum) !== buf.readUInt32BE(OFF.checksum)) throw bad('checksum does not match');
  const tableOffsetBig = buf.readBigUInt64BE(OFF.tableOffset);
  const maxTableEntries = buf.readUInt32BE(OFF.maxTableEntries);
  const blockSize = buf.readUInt32BE(OFF.blockSize);
  if (blockSize < SECTOR || blockSize > MAX_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0)
    throw bad(`block size ${blockSize} is not a power of two from 512 bytes to 256 MiB`);
  if (maxTableEntries > MAX_ENTRIES) throw bad(`BAT of ${maxTableEntries} entries is larger than ${MAX_ENTRIES}`);
  if (tableOffsetBig > BigInt(fileSize) || Number(tableOffsetBig) + maxTableEntries * 4 > fileSize)
    throw bad(`BAT (${maxTableEntries} entries at ${tableOffsetBig}) runs past the end of the file`);
  const tableOffset = Number(tableOffsetBig);
  if (tableOffset % SECTOR !== 0) throw bad(`BAT offset ${tableOffset} is not sector-aligned`);
  const locators: ParentLocator[] = [];
  for (let i = 0; i < 8; i++) {
    const at = OFF.locators + i * 24;
    const code = buf.toString('latin1', at, at + 4);
    if (buf.readUInt32BE(at) === 0) continue;
    const offset = buf.readBigUInt64BE(at + 16);
    const length = buf.readUInt32BE(at + 8);
    if (length > 64 * 1024 || offset + BigInt(length) > BigInt(fileSize)) continue; // a locator we cannot use is no locator
    locators.push({ code, space: buf.readUInt32BE(at + 4), length, offset: Number(offset) });
  }
  return {
    tableOffset,
    maxTableEntries,
    blockSize,
    parentUniqueId: Buffer.from(buf.subarray(OFF.parentUniqueId, OFF.parentUniqueId + 16)),
    parentTimestamp: buf.readUInt32BE(OFF.parentTimestamp),
    parentName: utf16be(buf.subarray(OFF.parentUnicodeName, OFF.parentUnicodeName + 512)),
    locators,
  };
}

function utf16be(b: Buffer): string {
  const le = Buffer.from(b);
  le.swap16();
  return le.toString('utf16le').replace(/\0.*$/s, '');
}

export interface NewDynamicHeader {
  tableOffset: number;
  maxTableEntries: number;
  blockSize: number;
  parent?: { uniqueId: Buffer; timestamp: number; name: string; locators: ParentLocator[] };
}

export function serializeDynamicHeader(h: NewDynamicHeader): Buffer {
  const b = Buffer.alloc(HEADER_BYTES);
  b.write(HEADER_COOKIE, OFF.cookie, 'latin1');
  b.writeBigUInt64BE(0xffffffffffffffffn, OFF.dataOffset);
  b.writeBigUInt64BE(BigInt(h.tableOffset), OFF.tableOffset);
  b.writeUInt32BE(0x00010000, OFF.version);
  b.writeUInt32BE(h.maxTableEntries, OFF.maxTableEntries);
  b.writeUInt32BE(h.blockSize, OFF.blockSize);
  if (h.parent) {
    h.parent.uniqueId.copy(b, OFF.parentUniqueId);
    b.writeUInt32BE(h.parent.timestamp >>> 0, OFF.parentTimestamp);
    const name = Buffer.from(h.parent.name.slice(0, 255), 'utf16le');
    name.swap16();
    name.copy(b, OFF.parentUnicodeName);
    h.parent.locators.slice(0, 8).forEach((l, i) => {
      const at = OFF.locators + i * 24;
      b.write(l.code, at, 'latin1');
      b.writeUInt32BE(l.space, at + 4);
      b.writeUInt32BE(l.length, at + 8);
      b.writeBigUInt64BE(BigInt(l.offset), at + 16);
    });
  }
  b.writeUInt32BE(vhdChecksum(b, OFF.checksum), OFF.checksum);
  return b;
}
