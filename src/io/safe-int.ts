import { VdiskError } from './errors';

/**
 * 64-bit on-disk fields are read as BigInt and converted here, once, at the parse boundary:
 * nothing past it sees BigInt. JS numbers are exact up to 2^53 (8 PiB), far beyond any disk
 * we serve; a larger value is a hostile or corrupt image, refused with its field name.
 */
export function toSafeNumber(v: bigint, field: string): number {
  if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw VdiskError.corrupt(`${field} out of range: ${v}`, { field });
  }
  return Number(v);
}

export function readU64(buf: Buffer, off: number, field: string, bigEndian = true): number {
  return toSafeNumber(bigEndian ? buf.readBigUInt64BE(off) : buf.readBigUInt64LE(off), field);
}

export function writeU64(buf: Buffer, off: number, v: number, bigEndian = true): void {
  if (!Number.isSafeInteger(v) || v < 0) throw VdiskError.invalid(`not a 64-bit unsigned value: ${v}`);
  if (bigEndian) buf.writeBigUInt64BE(BigInt(v), off);
  else buf.writeBigUInt64LE(BigInt(v), off);
}

export function alignUp(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

/**
 * The smallest power of two >= n (1 for n <= 1). Bit arithmetic up to 2^30, so no call into
 * libm's pow and log2: the FUSE loop asks for every request's buffer and size bucket.
 */
export function powerOfTwoAtLeast(n: number): number {
  if (n <= 1) return 1;
  if (n <= 1 << 30) return 1 << (32 - Math.clz32(n - 1));
  return 2 ** Math.ceil(Math.log2(n));
}

export function alignDown(v: number, a: number): number {
  return Math.floor(v / a) * a;
}
