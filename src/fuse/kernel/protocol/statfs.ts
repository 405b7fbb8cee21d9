import { writeU64 } from './u64';

/** What statfs(2) reports of the mount (struct fuse_kstatfs). */
export interface FsStats {
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  bsize: number;
  namelen: number;
  frsize: number;
}

/** struct fuse_statfs_out is 80 bytes. */
export const STATFS_OUT_SIZE = 80;

export function encodeStatfsOut(buf: Buffer, off: number, s: FsStats): number {
  buf.fill(0, off, off + STATFS_OUT_SIZE);
  writeU64(buf, s.blocks, off);
  writeU64(buf, s.bfree, off + 8);
  writeU64(buf, s.bavail, off + 16);
  writeU64(buf, s.files, off + 24);
  writeU64(buf, s.ffree, off + 32);
  buf.writeUInt32LE(s.bsize, off + 40);
  buf.writeUInt32LE(s.namelen, off + 44);
  buf.writeUInt32LE(s.frsize, off + 48);
  return STATFS_OUT_SIZE;
}
