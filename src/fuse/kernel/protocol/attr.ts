import { writeU64, readU64 } from './u64';
import { GETATTR_FH } from './flags';

/** What the kernel needs to know of a node (struct fuse_attr). Times in milliseconds since the epoch. */
export interface Attr {
  ino: number;
  size: number;
  /** 512-byte blocks the file really takes. */
  blocks: number;
  atimeMs: number;
  mtimeMs: number;
  ctimeMs: number;
  /** File type and permission bits (S_IFREG | 0644 ...). */
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  blksize: number;
}

/** struct fuse_attr is 88 bytes. */
export const ATTR_SIZE = 88;
/** struct fuse_entry_out: nodeid, generation, entry/attr validity, then fuse_attr. */
export const ENTRY_OUT_SIZE = 40 + ATTR_SIZE;
/** struct fuse_attr_out: attr validity, then fuse_attr. */
export const ATTR_OUT_SIZE = 16 + ATTR_SIZE;

function writeTime(buf: Buffer, ms: number, secOff: number, nsecOff: number): void {
  const t = Math.max(0, ms);
  const sec = Math.floor(t / 1000);
  writeU64(buf, sec, secOff);
  buf.writeUInt32LE(Math.min(999_999_999, Math.round((t - sec * 1000) * 1e6)), nsecOff);
}

/** Writes struct fuse_attr at `off`. */
export function encodeAttr(buf: Buffer, off: number, a: Attr): void {
  buf.fill(0, off, off + ATTR_SIZE);
  writeU64(buf, a.ino, off);
  writeU64(buf, a.size, off + 8);
  writeU64(buf, a.blocks, off + 16);
  writeTime(buf, a.atimeMs, off + 24, off + 48);
  writeTime(buf, a.mtimeMs, off + 32, off + 52);
  writeTime(buf, a.ctimeMs, off + 40, off + 56);
  buf.writeUInt32LE(a.mode >>> 0, off + 60);
  buf.writeUInt32LE(a.nlink, off + 64);
  buf.writeUInt32LE(a.uid >>> 0, off + 68);
  buf.writeUInt32LE(a.gid >>> 0, off + 72);
  // rdev (76) 0
  buf.writeUInt32LE(a.blksize, off + 80);
  // flags (84) 0
}

/** Splits a validity in seconds (may be fractional) into the u64 seconds + u32 ns pair. */
function writeValid(buf: Buffer, seconds: number, secOff: number, nsecOff: number): void {
  const s = Math.floor(seconds);
  writeU64(buf, s, secOff);
  buf.writeUInt32LE(Math.round((seconds - s) * 1e9), nsecOff);
}

/** Writes struct fuse_entry_out (LOOKUP reply) at `off`; returns its size. */
export function encodeEntryOut(buf: Buffer, off: number, nodeid: number, entryValid: number, attrValid: number, a: Attr): number {
  writeU64(buf, nodeid, off);
  writeU64(buf, 0, off + 8); // generation: node ids are never reused, so 0 is unique enough
  writeValid(buf, entryValid, off + 16, off + 32);
  writeValid(buf, attrValid, off + 24, off + 36);
  encodeAttr(buf, off + 40, a);
  return ENTRY_OUT_SIZE;
}

/** Writes struct fuse_attr_out (GETATTR/SETATTR reply) at `off`; returns its size. */
export function encodeAttrOut(buf: Buffer, off: number, attrValid: number, a: Attr): number {
  writeValid(buf, attrValid, off, off + 8);
  buf.writeUInt32LE(0, off + 12);
  encodeAttr(buf, off + 16, a);
  return ATTR_OUT_SIZE;
}

/** struct fuse_getattr_in: fh is meaningful only with GETATTR_FH (fstat on an open file). */
export function decodeGetattrIn(buf: Buffer, off: number, end: number): { fh: number | undefined } {
  if (end - off < 16) return { fh: undefined };
  const flags = buf.readUInt32LE(off);
  return { fh: flags & GETATTR_FH ? readU64(buf, off + 8) : undefined };
}

/** A NUL-terminated name (LOOKUP): the bytes up to the NUL, as UTF-8. */
export function decodeName(buf: Buffer, off: number, end: number): string {
  let stop = buf.indexOf(0, off);
  if (stop < 0 || stop > end) stop = end;
  return buf.toString('utf8', off, stop);
}
