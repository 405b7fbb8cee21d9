/**
 * Log entries ([MS-VHDX] 2.3): a 64-byte header ("loge", Checksum, EntryLength, Tail,
 * SequenceNumber, DescriptorCount, LogGuid, FlushedFileOffset, LastFileOffset), then 32-byte
 * descriptors (the header and the first 126 descriptors share the first 4 KiB sector), then one
 * 4 KiB data sector per data descriptor. A zero descriptor ("zero": ZeroLength, FileOffset,
 * SequenceNumber) zeroes a file range; a data descriptor ("desc": TrailingBytes, LeadingBytes,
 * FileOffset, SequenceNumber) writes one 4 KiB sector whose first 8 and last 4 bytes it holds,
 * the data sector ("data", SequenceHigh, 4084 bytes, SequenceLow) holding the rest. The checksum
 * is CRC-32C over the whole entry with the Checksum field zero.
 */
import { crc32c, sealChecksum } from './crc32c';
import { GUID_SIZE } from './guid';

export const LOG_SECTOR = 4096;
const HEADER_MAGIC = 'loge';

export interface LogWrite {
  /** File offset, a multiple of 4 KiB. */
  offset: number;
  /** 4 KiB of data, or null for a zero descriptor of `length` bytes. */
  data: Buffer | null;
  length: number;
}

export interface LogEntry {
  /** Where it starts in the log (bytes from LogOffset). */
  pos: number;
  length: number;
  /** Offset (in the log) of the oldest entry of the active sequence, as this entry saw it. */
  tail: number;
  sequence: bigint;
  flushedFileOffset: number;
  lastFileOffset: number;
  writes: LogWrite[];
}

/** Descriptor sectors for `count` descriptors: the 64-byte header takes the room of two. */
export function descriptorSectors(count: number): number {
  return Math.ceil((count + 2) / 128);
}

/** `len` bytes of the circular log starting at `pos` (an entry may wrap past the end). */
function circular(log: Buffer, pos: number, len: number): Buffer {
  if (pos + len <= log.length) return log.subarray(pos, pos + len);
  const first = log.length - pos;
  return Buffer.concat([log.subarray(pos), log.subarray(0, len - first)]);
}

function u64(buf: Buffer, off: number): number | undefined {
  const v = buf.readBigUInt64LE(off);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : Number(v);
}

/**
 * The entry at `pos` of the log buffer when it is valid for `logGuid`, else undefined. `budget`
 * counts the bytes checksummed so far (a hostile log cannot make the search quadratic forever).
 */
export function readLogEntry(log: Buffer, pos: number, logGuid: Buffer, budget: { bytes: number }): LogEntry | undefined {
  const h = log.subarray(pos, pos + 64);
  if (h.length < 64 || h.toString('latin1', 0, 4) !== HEADER_MAGIC) return undefined;
  const length = h.readUInt32LE(8);
  const tail = h.readUInt32LE(12);
  const sequence = h.readBigUInt64LE(16);
  const count = h.readUInt32LE(24);
  // "EntryLength MUST be a multiple of 4 KB"; an entry longer than the log cannot be whole.
  if (length === 0 || length % LOG_SECTOR !== 0 || length > log.length) return undefined;
  if (tail % LOG_SECTOR !== 0 || tail >= log.length || sequence === 0n) return undefined;
  if (!h.subarray(32, 32 + GUID_SIZE).equals(logGuid)) return undefined;
  const descSectors = descriptorSectors(count);
  if (descSectors * LOG_SECTOR > length) return undefined;
  const flushedFileOffset = u64(h, 48);
  const lastFileOffset = u64(h, 56);
  if (flushedFileOffset === undefined || lastFileOffset === undefined) return undefined;
  budget.bytes += length;
  const whole = circular(log, pos, length);
  let c = crc32c(whole.subarray(0, 4));
  c = crc32c(Buffer.alloc(4), c);
  c = crc32c(whole.subarray(8), c);
  if (c !== whole.readUInt32LE(4)) return undefined;
  const writes: LogWrite[] = [];
  let dataAt = descSectors * LOG_SECTOR;
  for (let i = 0; i < count; i++) {
    const d = whole.subarray(64 + i * 32, 96 + i * 32);
    const sig = d.toString('latin1', 0, 4);
    const offset = u64(d, 16);
    if (offset === undefined || offset % LOG_SECTOR !== 0 || d.readBigUInt64LE(24) !== sequence) return undefined;
    if (sig === 'zero') {
      const zl = u64(d, 8);
      if (zl === undefined || zl % LOG_SECTOR !== 0) return undefined;
      writes.push({ offset, data: null, length: zl });
    } else if (sig === 'desc') {
      if (dataAt + LOG_SECTOR > length) return undefined;
      const s = whole.subarray(dataAt, dataAt + LOG_SECTOR);
      dataAt += LOG_SECTOR;
      const seq = (BigInt(s.readUInt32LE(4)) << 32n) | BigInt(s.readUInt32LE(4092));
      if (s.toString('latin1', 0, 4) !== 'data' || seq !== sequence) return undefined;
      const sector = Buffer.alloc(LOG_SECTOR);
      d.copy(sector, 0, 8, 16); // LeadingBytes
      s.copy(sector, 8, 8, 4092);
      d.copy(sector, 4092, 4, 8); // TrailingBytes
      writes.push({ offset, data: sector, length: LOG_SECTOR });
    } else {
      return undefined;
    }
  }
  return { pos, length, tail, sequence, flushedFileOffset, lastFileOffset, writes };
}

/** One entry writing whole 4 KiB sectors (`sectors`: file offset → 4 KiB), ready for the log. */
export function buildLogEntry(o: {
  sequence: bigint;
  tail: number;
  logGuid: Buffer;
  flushedFileOffset: number;
  lastFileOffset: number;
  sectors: Array<[number, Buffer]>;
}): Buffer {
  const n = o.sectors.length;
  const descSectors = descriptorSectors(n);
  const length = (descSectors + n) * LOG_SECTOR;
  const b = Buffer.alloc(length);
  b.write(HEADER_MAGIC, 0, 'latin1');
  b.writeUInt32LE(length, 8);
  b.writeUInt32LE(o.tail, 12);
  b.writeBigUInt64LE(o.sequence, 16);
  b.writeUInt32LE(n, 24);
  o.logGuid.copy(b, 32);
  b.writeBigUInt64LE(BigInt(o.flushedFileOffset), 48);
  b.writeBigUInt64LE(BigInt(o.lastFileOffset), 56);
  const hi = Number(o.sequence >> 32n);
  const lo = Number(o.sequence & 0xffffffffn);
  o.sectors.forEach(([offset, data], i) => {
    const d = b.subarray(64 + i * 32, 96 + i * 32);
    d.write('desc', 0, 'latin1');
    data.copy(d, 4, 4092, 4096); // TrailingBytes
    data.copy(d, 8, 0, 8); // LeadingBytes
    d.writeBigUInt64LE(BigInt(offset), 16);
    d.writeBigUInt64LE(o.sequence, 24);
    const s = b.subarray((descSectors + i) * LOG_SECTOR, (descSectors + i + 1) * LOG_SECTOR);
    s.write('data', 0, 'latin1');
    s.writeUInt32LE(hi, 4);
    data.copy(s, 8, 8, 4092);
    s.writeUInt32LE(lo, 4092);
  });
  sealChecksum(b, 4);
  return b;
}

/** How many 4 KiB sectors one entry can carry in a log of `logLength` bytes. */
export function sectorsPerEntry(logLength: number): number {
  const total = logLength / LOG_SECTOR;
  let n = total - 1;
  while (n > 0 && descriptorSectors(n) + n > total) n--;
  return n;
}
