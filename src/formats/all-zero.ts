/**
 * All-zero detection, the one copy: the merger turns all-zero extents into Image.writeZeroes,
 * and the qcow2 write path stores zero clusters for them. Buffer.equals is a native memcmp
 * against a shared zero page, so the check costs far less than the write it may save.
 */
const ZERO_CHUNK = Buffer.alloc(64 * 1024);

export function isAllZero(buf: Buffer): boolean {
  // Cheap reject first: real data almost never starts and ends with zero words together.
  const n = buf.length;
  if (n === 0) return true;
  if (buf[0] !== 0 || buf[n - 1] !== 0 || buf[n >>> 1] !== 0) return false;
  for (let off = 0; off < n; off += ZERO_CHUNK.length) {
    const len = Math.min(ZERO_CHUNK.length, n - off);
    if (!buf.subarray(off, off + len).equals(len === ZERO_CHUNK.length ? ZERO_CHUNK : ZERO_CHUNK.subarray(0, len))) return false;
  }
  return true;
}

export function allZero(bufs: readonly Buffer[]): boolean {
  for (const b of bufs) if (!isAllZero(b)) return false;
  return true;
}
