/**
 * The two headers ([MS-VHDX] 2.2.2), at 64 KiB and 128 KiB, 4 KiB each (the rest of their 64 KiB
 * is reserved). "The header with the highest SequenceNumber whose checksum is valid is the
 * current header"; an update writes the other one with SequenceNumber + 1, so a torn write leaves
 * the previous header current.
 */
import { VdiskError } from '../../io/errors';
import { readU64, writeU64 } from '../../io/safe-int';
import { sealChecksum, vhdxChecksum } from './crc32c';
import { GUID_SIZE } from './guid';

export const HEADER_OFFSETS = [64 * 1024, 128 * 1024] as const;
export const HEADER_SIZE = 4096;
const MAGIC = 'head';
const MiB = 1 << 20;

export interface VhdxHeader {
  /** "incremented each time the header is updated"; the higher valid one wins. */
  sequenceNumber: bigint;
  /** "changed the first time the file is opened for write" (by any writer, metadata or data). */
  fileWriteGuid: Buffer;
  /** "changed on the first user-visible data change": a differencing child records it as parent_linkage. */
  dataWriteGuid: Buffer;
  /** Non-null: the log holds entries to replay (they carry this GUID). Null: the log is empty. */
  logGuid: Buffer;
  /** "MUST be 0". */
  logVersion: number;
  /** "MUST be 1". */
  version: number;
  /** Bytes of the log, a multiple of 1 MiB. */
  logLength: number;
  /** Byte offset of the log, a multiple of 1 MiB and at least 1 MiB. */
  logOffset: number;
}

/** The header stored in `buf` (4 KiB), or a reason it is not valid (bad signature or checksum). */
export function parseHeader(buf: Buffer): VhdxHeader | string {
  if (buf.toString('latin1', 0, 4) !== MAGIC) return 'no "head" signature';
  const sum = buf.readUInt32LE(4);
  if (vhdxChecksum(buf.subarray(0, HEADER_SIZE), 4) !== sum) return 'checksum mismatch';
  return {
    sequenceNumber: buf.readBigUInt64LE(8),
    fileWriteGuid: Buffer.from(buf.subarray(16, 16 + GUID_SIZE)),
    dataWriteGuid: Buffer.from(buf.subarray(32, 32 + GUID_SIZE)),
    logGuid: Buffer.from(buf.subarray(48, 48 + GUID_SIZE)),
    logVersion: buf.readUInt16LE(64),
    version: buf.readUInt16LE(66),
    logLength: buf.readUInt32LE(68),
    logOffset: readU64(buf, 72, 'header LogOffset', false),
  };
}

/** The fields a valid-checksum header must also get right before anything trusts it. */
export function checkHeader(file: string, h: VhdxHeader, fileSize: number): void {
  if (h.version !== 1) throw VdiskError.unsupported(`${file}: VHDX header version ${h.version} (only 1 is defined)`);
  if (h.logVersion !== 0) throw VdiskError.unsupported(`${file}: VHDX log version ${h.logVersion} (only 0 is defined)`);
  if (h.logLength % MiB !== 0 || h.logOffset % MiB !== 0 || h.logOffset < MiB)
    throw VdiskError.corrupt(`${file}: log at ${h.logOffset}+${h.logLength} is not 1 MiB aligned past the header section`);
  if (h.logOffset + h.logLength > fileSize)
    throw VdiskError.corrupt(`${file}: log at ${h.logOffset}+${h.logLength} ends past the end of the file (${fileSize} bytes)`);
}

export function serializeHeader(h: VhdxHeader): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.write(MAGIC, 0, 'latin1');
  b.writeBigUInt64LE(h.sequenceNumber, 8);
  h.fileWriteGuid.copy(b, 16);
  h.dataWriteGuid.copy(b, 32);
  h.logGuid.copy(b, 48);
  b.writeUInt16LE(h.logVersion, 64);
  b.writeUInt16LE(h.version, 66);
  b.writeUInt32LE(h.logLength, 68);
  writeU64(b, 72, h.logOffset, false);
  sealChecksum(b, 4);
  return b;
}

/**
 * Which of the two stored headers is current: the valid one with the higher sequence number.
 * Two valid headers with the same number must be identical (Disk2VHD writes them so); else corrupt.
 */
export function currentHeader(file: string, bufs: [Buffer, Buffer]): { header: VhdxHeader; slot: 0 | 1 } {
  const a = parseHeader(bufs[0]);
  const b = parseHeader(bufs[1]);
  if (typeof a === 'string' && typeof b === 'string') throw VdiskError.corrupt(`${file}: neither VHDX header is valid (${a}; ${b})`);
  if (typeof b === 'string') return { header: a as VhdxHeader, slot: 0 };
  if (typeof a === 'string') return { header: b, slot: 1 };
  if (a.sequenceNumber > b.sequenceNumber) return { header: a, slot: 0 };
  if (b.sequenceNumber > a.sequenceNumber) return { header: b, slot: 1 };
  if (bufs[0].subarray(0, HEADER_SIZE).equals(bufs[1].subarray(0, HEADER_SIZE))) return { header: a, slot: 0 };
  throw VdiskError.corrupt(`${file}: both VHDX headers carry sequence number ${a.sequenceNumber} but differ`);
}
