import { VdiskError } from '../../../io/errors';
import { readU64, writeU64 } from './u64';

/** struct fuse_in_header: every request starts with it. */
export const IN_HEADER_SIZE = 40;
/** struct fuse_out_header: every reply starts with it. */
export const OUT_HEADER_SIZE = 16;

export interface RequestHeader {
  /** Total length of the request, header included. */
  len: number;
  opcode: number;
  /** Request id, echoed in the reply (an INTERRUPT names the request it interrupts by it). */
  unique: number;
  /** Node the request is about (1 = root). */
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
}

/** Decodes the header of a request of `n` bytes read from /dev/fuse. */
export function decodeInHeader(buf: Buffer, n: number): RequestHeader {
  if (n < IN_HEADER_SIZE) throw VdiskError.invalid(`short FUSE request: ${n} bytes`);
  const len = buf.readUInt32LE(0);
  if (len !== n) throw VdiskError.invalid(`FUSE request says ${len} bytes, read ${n}`);
  return {
    len,
    opcode: buf.readUInt32LE(4),
    unique: readU64(buf, 8),
    nodeid: readU64(buf, 16),
    uid: buf.readUInt32LE(24),
    gid: buf.readUInt32LE(28),
    pid: buf.readUInt32LE(32),
    // total_extlen (u16 at 36) stays 0: we ask for no request extensions.
  };
}

/** Writes the reply header: `len` is the whole reply, `error` 0 or a negative errno. */
export function encodeOutHeader(buf: Buffer, len: number, error: number, unique: number): void {
  buf.writeUInt32LE(len, 0);
  buf.writeInt32LE(error, 4);
  writeU64(buf, unique, 8);
}
