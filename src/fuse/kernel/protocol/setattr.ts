import { readU64 } from './u64';
import { SetattrValid } from './flags';

/** struct fuse_setattr_in (88 bytes): only the fields `valid` names mean anything. */
export interface SetattrIn {
  valid: number;
  /** With FATTR_FH: the open file this came through (ftruncate). */
  fh: number | undefined;
  /** With FATTR_SIZE: truncate(2) / O_TRUNC. */
  size: number | undefined;
  mode: number | undefined;
}

export function decodeSetattrIn(buf: Buffer, off: number): SetattrIn {
  const valid = buf.readUInt32LE(off);
  return {
    valid,
    fh: valid & SetattrValid.FH ? readU64(buf, off + 8) : undefined,
    size: valid & SetattrValid.SIZE ? readU64(buf, off + 16) : undefined,
    mode: valid & SetattrValid.MODE ? buf.readUInt32LE(off + 68) : undefined,
  };
}
