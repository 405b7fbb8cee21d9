import { VdiskError } from '../../../io/errors';

/**
 * 64-bit little-endian fields as JS numbers. Offsets, sizes and handles on this protocol fit in
 * 2^53; a larger value (a hostile or corrupt request) is refused, never rounded.
 */
export function readU64(buf: Buffer, off: number): number {
  const lo = buf.readUInt32LE(off);
  const hi = buf.readUInt32LE(off + 4);
  if (hi >= 0x200000) throw VdiskError.invalid(`64-bit field at ${off} is beyond 2^53`, { hi, lo });
  return hi * 0x100000000 + lo;
}

/** Writes a non-negative safe integer as u64 LE. */
export function writeU64(buf: Buffer, value: number, off: number): void {
  buf.writeUInt32LE(value >>> 0, off);
  buf.writeUInt32LE(Math.floor(value / 0x100000000) >>> 0, off + 4);
}

/** Reads a u64 that may be any value (the unique id of a request, echoed back as is). */
export function readU64Big(buf: Buffer, off: number): bigint {
  return buf.readBigUInt64LE(off);
}
