import { writeU64 } from './u64';

export interface DirEntry {
  ino: number;
  name: string;
  /** DT_* value (DirentType). */
  type: number;
}

/** struct fuse_dirent is 24 bytes + name, padded to 8. */
const DIRENT_HEADER = 24;

export function direntSize(nameBytes: number): number {
  return (DIRENT_HEADER + nameBytes + 7) & ~7;
}

/**
 * Packs entries[from..] as fuse_dirent records at `off`, at most `max` bytes. Each record's `off`
 * field is the index of the next entry: the kernel passes it back as the next READDIR offset.
 * Returns the bytes written.
 */
export function encodeDirents(buf: Buffer, off: number, max: number, entries: readonly DirEntry[], from: number): number {
  let p = off;
  for (let i = from; i < entries.length; i++) {
    const e = entries[i]!;
    const nameLen = Buffer.byteLength(e.name);
    const rec = direntSize(nameLen);
    if (p - off + rec > max) break;
    buf.fill(0, p, p + rec);
    writeU64(buf, e.ino, p);
    writeU64(buf, i + 1, p + 8);
    buf.writeUInt32LE(nameLen, p + 16);
    buf.writeUInt32LE(e.type, p + 20);
    buf.write(e.name, p + DIRENT_HEADER, 'utf8');
    p += rec;
  }
  return p - off;
}
