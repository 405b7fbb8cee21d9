import { readU64, writeU64 } from './u64';

/** struct fuse_lseek_in: only SEEK_DATA (3) and SEEK_HOLE (4) reach the server. */
export interface LseekIn {
  fh: number;
  offset: number;
  whence: number;
}

export function decodeLseekIn(buf: Buffer, off: number): LseekIn {
  return { fh: readU64(buf, off), offset: readU64(buf, off + 8), whence: buf.readUInt32LE(off + 16) };
}

/** struct fuse_lseek_out: the resulting offset. */
export function encodeLseekOut(buf: Buffer, off: number, offset: number): number {
  writeU64(buf, offset, off);
  return 8;
}
