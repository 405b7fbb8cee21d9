import { ENTRY_OUT_SIZE } from './attr';
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
    const rec = direntSize(Buffer.byteLength(entries[i]!.name));
    if (p - off + rec > max) break;
    p += writeDirent(buf, p, entries[i]!, i + 1);
  }
  return p - off;
}

/** One fuse_dirent at `p`; `next` is the offset the kernel passes back to continue after it. */
function writeDirent(buf: Buffer, p: number, e: DirEntry, next: number): number {
  const nameLen = Buffer.byteLength(e.name);
  const rec = direntSize(nameLen);
  buf.fill(0, p, p + rec);
  writeU64(buf, e.ino, p);
  writeU64(buf, next, p + 8);
  buf.writeUInt32LE(nameLen, p + 16);
  buf.writeUInt32LE(e.type, p + 20);
  buf.write(e.name, p + DIRENT_HEADER, 'utf8');
  return rec;
}

/** struct fuse_direntplus: a fuse_entry_out (LOOKUP's reply) followed by the fuse_dirent. */
export function direntPlusSize(nameBytes: number): number {
  return ENTRY_OUT_SIZE + direntSize(nameBytes);
}

/**
 * How many of entries[from..] fit in `max` bytes as fuse_direntplus records (READDIRPLUS):
 * the records that will be sent, so only their attributes are looked up.
 */
export function direntPlusFit(max: number, entries: readonly DirEntry[], from: number): number {
  let used = 0;
  let i = from;
  for (; i < entries.length; i++) {
    const rec = direntPlusSize(Buffer.byteLength(entries[i]!.name));
    if (used + rec > max) break;
    used += rec;
  }
  return i - from;
}

/**
 * Packs entries[from..from+count) as fuse_direntplus records at `off`. `entryOut(i, buf, at)`
 * writes entry i's fuse_entry_out (a zero node id when there is none: the kernel then only lists
 * the name). Returns the bytes written.
 */
export function encodeDirentsPlus(
  buf: Buffer,
  off: number,
  entries: readonly DirEntry[],
  from: number,
  count: number,
  entryOut: (i: number, buf: Buffer, at: number) => void,
): number {
  let p = off;
  for (let i = from; i < from + count; i++) {
    buf.fill(0, p, p + ENTRY_OUT_SIZE);
    entryOut(i, buf, p);
    p += ENTRY_OUT_SIZE;
    p += writeDirent(buf, p, entries[i]!, i + 1);
  }
  return p - off;
}
