import { readU64 } from './u64';

/** struct fuse_fallocate_in: fallocate(2) on an open file; mode holds FALLOC_FL_* bits. */
export interface FallocateIn {
  fh: number;
  offset: number;
  length: number;
  mode: number;
}

export function decodeFallocateIn(buf: Buffer, off: number): FallocateIn {
  return { fh: readU64(buf, off), offset: readU64(buf, off + 8), length: readU64(buf, off + 16), mode: buf.readUInt32LE(off + 24) };
}
