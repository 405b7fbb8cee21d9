/**
 * The region table ([MS-VHDX] 2.2.3), at 192 KiB with a copy at 256 KiB, 64 KiB each: a header
 * ("regi", CRC-32C over the 64 KiB, EntryCount at most 2047) and 32-byte entries naming where
 * the BAT and the metadata region are. "If the Required field is set and the implementation
 * does not recognize the region, it MUST fail to load the file."
 */
import { VdiskError } from '../../io/errors';
import { readU64, writeU64 } from '../../io/safe-int';
import { sealChecksum, vhdxChecksum } from './crc32c';
import { guidBytes, guidText } from './guid';

export const REGION_TABLE_OFFSETS = [192 * 1024, 256 * 1024] as const;
export const REGION_TABLE_SIZE = 64 * 1024;
const MAGIC = 'regi';
const MAX_ENTRIES = 2047;
const MiB = 1 << 20;

export const BAT_REGION = guidBytes('2DC27766-F623-4200-9D64-115E9BFD4A08');
export const METADATA_REGION = guidBytes('8B7CA206-4790-4B9A-B8FE-575F050F886E');

export interface Region {
  /** Byte offset in the file, a multiple of 1 MiB (and at least 1 MiB). */
  offset: number;
  /** Bytes, a multiple of 1 MiB. */
  length: number;
}

export interface RegionTable {
  bat: Region;
  metadata: Region;
}

/** Parses one 64 KiB copy; a string says why it is not valid (the other copy may be). */
export function parseRegionTable(file: string, buf: Buffer, fileSize: number): RegionTable | string {
  if (buf.toString('latin1', 0, 4) !== MAGIC) return 'no "regi" signature';
  if (vhdxChecksum(buf.subarray(0, REGION_TABLE_SIZE), 4) !== buf.readUInt32LE(4)) return 'checksum mismatch';
  const count = buf.readUInt32LE(8);
  if (count > MAX_ENTRIES) throw VdiskError.corrupt(`${file}: region table lists ${count} entries (at most ${MAX_ENTRIES})`);
  let bat: Region | undefined;
  let metadata: Region | undefined;
  const seen: Region[] = [];
  for (let i = 0; i < count; i++) {
    const at = 16 + i * 32;
    const guid = buf.subarray(at, at + 16);
    const offset = readU64(buf, at + 16, 'region FileOffset', false);
    const length = buf.readUInt32LE(at + 24);
    const required = (buf.readUInt32LE(at + 28) & 1) !== 0;
    if (offset % MiB !== 0 || offset < MiB || length % MiB !== 0 || length === 0)
      throw VdiskError.corrupt(`${file}: region ${guidText(guid)} at ${offset}+${length} is not 1 MiB aligned past the header section`);
    if (offset + length > fileSize)
      throw VdiskError.corrupt(
        `${file}: region ${guidText(guid)} at ${offset}+${length} ends past the end of the file (${fileSize} bytes)`,
      );
    for (const r of seen)
      if (offset < r.offset + r.length && r.offset < offset + length)
        throw VdiskError.corrupt(`${file}: regions at ${offset} and ${r.offset} overlap`);
    const r = { offset, length };
    seen.push(r);
    if (guid.equals(BAT_REGION)) bat = r;
    else if (guid.equals(METADATA_REGION)) metadata = r;
    else if (required) throw VdiskError.unsupported(`${file}: required region ${guidText(guid)} is unknown`);
  }
  if (!bat || !metadata) throw VdiskError.corrupt(`${file}: region table lacks the ${bat ? 'metadata' : 'BAT'} region`);
  return { bat, metadata };
}

export function serializeRegionTable(t: RegionTable): Buffer {
  const b = Buffer.alloc(REGION_TABLE_SIZE);
  b.write(MAGIC, 0, 'latin1');
  b.writeUInt32LE(2, 8);
  const put = (i: number, guid: Buffer, r: Region) => {
    const at = 16 + i * 32;
    guid.copy(b, at);
    writeU64(b, at + 16, r.offset, false);
    b.writeUInt32LE(r.length, at + 24);
    b.writeUInt32LE(1, at + 28); // Required: both are
  };
  put(0, BAT_REGION, t.bat);
  put(1, METADATA_REGION, t.metadata);
  sealChecksum(b, 4);
  return b;
}
