import { readU64, writeU64 } from './u64';
import { FSYNC_FDATASYNC } from './flags';

/** struct fuse_open_in: the open(2) flags (O_ACCMODE, O_DIRECT, O_SYNC, O_TRUNC with ATOMIC_O_TRUNC). */
export function decodeOpenIn(buf: Buffer, off: number): { flags: number } {
  return { flags: buf.readUInt32LE(off) };
}

export const OPEN_OUT_SIZE = 16;

/** struct fuse_open_out: our handle and FOPEN_* flags. */
export function encodeOpenOut(buf: Buffer, off: number, fh: number, openFlags: number): number {
  writeU64(buf, fh, off);
  buf.writeUInt32LE(openFlags >>> 0, off + 8);
  buf.writeUInt32LE(0, off + 12); // backing_id (passthrough): unused
  return OPEN_OUT_SIZE;
}

/** struct fuse_release_in (RELEASE, RELEASEDIR). */
export function decodeReleaseIn(buf: Buffer, off: number): { fh: number; flags: number } {
  return { fh: readU64(buf, off), flags: buf.readUInt32LE(off + 8) };
}

/** struct fuse_flush_in: sent on every close(2) of a file descriptor. */
export function decodeFlushIn(buf: Buffer, off: number): { fh: number } {
  return { fh: readU64(buf, off) };
}

/** struct fuse_fsync_in (FSYNC, FSYNCDIR). */
export function decodeFsyncIn(buf: Buffer, off: number): { fh: number; datasync: boolean } {
  return { fh: readU64(buf, off), datasync: (buf.readUInt32LE(off + 8) & FSYNC_FDATASYNC) !== 0 };
}
