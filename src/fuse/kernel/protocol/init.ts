import { InitFlag } from './flags';

/** struct fuse_init_in (7.36+: 64 bytes; older kernels send the first 16). */
export interface InitIn {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
  /** Bits 32..63 of the flags; 0 unless the kernel set INIT_EXT. */
  flags2: number;
}

export function decodeInitIn(buf: Buffer, off: number, end: number): InitIn {
  const flags = buf.readUInt32LE(off + 12) >>> 0;
  const ext = (flags & InitFlag.INIT_EXT) !== 0 && end - off >= 20;
  return {
    major: buf.readUInt32LE(off),
    minor: buf.readUInt32LE(off + 4),
    maxReadahead: buf.readUInt32LE(off + 8),
    flags,
    flags2: ext ? buf.readUInt32LE(off + 16) >>> 0 : 0,
  };
}

/** struct fuse_init_out fields we set; the rest are zero (kernel defaults). */
export interface InitOut {
  major: number;
  minor: number;
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  /** Timestamp granularity in ns (1 = full nanosecond timestamps). */
  timeGran: number;
  /** Largest request in pages; honoured with MAX_PAGES only. */
  maxPages: number;
  /** Bits 32..63 of the flags (InitFlag2); read by the kernel only when flags has INIT_EXT. */
  flags2?: number;
}

/** Size of fuse_init_out for a negotiated minor: 24 bytes before 7.23, 64 bytes since. */
export function initOutSize(minor: number): number {
  return minor < 23 ? 24 : 64;
}

/** Writes fuse_init_out at `off`; returns its size. */
export function encodeInitOut(buf: Buffer, off: number, o: InitOut): number {
  const size = initOutSize(o.minor);
  buf.fill(0, off, off + size);
  buf.writeUInt32LE(o.major, off);
  buf.writeUInt32LE(o.minor, off + 4);
  buf.writeUInt32LE(o.maxReadahead, off + 8);
  buf.writeUInt32LE(o.flags >>> 0, off + 12);
  buf.writeUInt16LE(o.maxBackground, off + 16);
  buf.writeUInt16LE(o.congestionThreshold, off + 18);
  buf.writeUInt32LE(o.maxWrite, off + 20);
  if (size >= 64) {
    buf.writeUInt32LE(o.timeGran, off + 24);
    buf.writeUInt16LE(o.maxPages, off + 28);
    // map_alignment (off + 30): 0
    buf.writeUInt32LE((o.flags2 ?? 0) >>> 0, off + 32);
    // max_stack_depth, request_timeout: 0
  }
  return size;
}
