import { readU64 } from './u64';

/** struct fuse_forget_in: drop `nlookup` lookups of the request's node. */
export function decodeForgetIn(buf: Buffer, off: number): { nlookup: number } {
  return { nlookup: readU64(buf, off) };
}

/** struct fuse_batch_forget_in (count, dummy) followed by `count` fuse_forget_one {nodeid, nlookup}. */
export function decodeBatchForgetIn(buf: Buffer, off: number, end: number): Array<{ nodeid: number; nlookup: number }> {
  const count = buf.readUInt32LE(off);
  const out: Array<{ nodeid: number; nlookup: number }> = [];
  for (let i = 0, p = off + 8; i < count && p + 16 <= end; i++, p += 16) {
    out.push({ nodeid: readU64(buf, p), nlookup: readU64(buf, p + 8) });
  }
  return out;
}

/** struct fuse_interrupt_in: the unique id of the request to interrupt. */
export function decodeInterruptIn(buf: Buffer, off: number): { unique: number } {
  return { unique: readU64(buf, off) };
}
