import { readU64 } from './u64';

/** struct fuse_read_in (READ, READDIR). */
export interface ReadIn {
  fh: number;
  offset: number;
  size: number;
}

export function decodeReadIn(buf: Buffer, off: number): ReadIn {
  return { fh: readU64(buf, off), offset: readU64(buf, off + 8), size: buf.readUInt32LE(off + 16) };
}

/** struct fuse_write_in is 40 bytes (7.9+); the data follows it. */
export const WRITE_IN_SIZE = 40;

export interface WriteIn {
  fh: number;
  offset: number;
  size: number;
  /** Where the payload starts in the request buffer. */
  dataOffset: number;
}

export function decodeWriteIn(buf: Buffer, off: number, end: number): WriteIn {
  const size = buf.readUInt32LE(off + 16);
  const dataOffset = off + WRITE_IN_SIZE;
  if (dataOffset + size > end) throw new RangeError(`WRITE of ${size} bytes but only ${end - dataOffset} came`);
  return { fh: readU64(buf, off), offset: readU64(buf, off + 8), size, dataOffset };
}

/** struct fuse_write_out: bytes written. */
export function encodeWriteOut(buf: Buffer, off: number, size: number): number {
  buf.writeUInt32LE(size, off);
  buf.writeUInt32LE(0, off + 4);
  return 8;
}
