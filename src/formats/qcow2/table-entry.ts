/**
 * L1 and L2 table entries (qcow2.txt "Cluster mapping"). Tables stay big-endian Buffers in
 * memory; these helpers decode one entry on access. 64-bit entries are read as two 32-bit words
 * because JS bitwise operators are 32-bit.
 *
 * Standard L2 entry: bit 63 COPIED (refcount is exactly 1), bit 62 compressed,
 *   normal: bits 9-55 host cluster offset, bit 0 "reads as zeros";
 *   compressed: bits 0..x-1 host offset, bits x..61 additional 512-byte sectors, x = 62 - (cluster_bits - 8).
 * Extended L2 (incompatible bit 4): 128-bit entries, the standard word then a bitmap word whose
 *   low 32 bits say "subcluster allocated" and high 32 bits "subcluster reads as zeros".
 */

export const COPIED_HI = 0x80000000;
export const COMPRESSED_HI = 0x40000000;
export const OFFSET_HI_MASK = 0x00ffffff;
export const OFFSET_LO_MASK = 0xfffffe00;
const TWO32 = 2 ** 32;

/** L1 entry: host offset of an L2 table (0 = none). */
export function l1Offset(t: Buffer, i: number): number {
  const o = i * 8;
  return (t.readUInt32BE(o) & OFFSET_HI_MASK) * TWO32 + ((t.readUInt32BE(o + 4) & OFFSET_LO_MASK) >>> 0);
}
export function l1Copied(t: Buffer, i: number): boolean {
  return (t.readUInt32BE(i * 8) & COPIED_HI) !== 0;
}
/** The first (high) word of an L1 or L2 entry with COPIED set or cleared. */
export function withCopied(hi: number, copied: boolean): number {
  return (copied ? hi | COPIED_HI : hi & ~COPIED_HI) >>> 0;
}
export function setL1(t: Buffer, i: number, host: number, copied: boolean): void {
  const o = i * 8;
  t.writeUInt32BE(((Math.floor(host / TWO32) & OFFSET_HI_MASK) | (copied ? COPIED_HI : 0)) >>> 0, o);
  t.writeUInt32BE((host % TWO32) >>> 0, o + 4);
}

export interface L2Layout {
  clusterBits: number;
  extended: boolean;
  /** Bytes per entry: 8 or 16. */
  entrySize: number;
  /** External data file: host offset 0 is a real cluster (allocated entries carry COPIED). */
  dataFile?: boolean;
}

export const KIND_UNALLOCATED = 0;
export const KIND_ZERO = 1; // standard zero flag (with or without a preallocated host cluster)
export const KIND_NORMAL = 2;
export const KIND_COMPRESSED = 3;

export function entryHi(t: Buffer, i: number, l: L2Layout): number {
  return t.readUInt32BE(i * l.entrySize);
}
export function entryLo(t: Buffer, i: number, l: L2Layout): number {
  return t.readUInt32BE(i * l.entrySize + 4);
}

/** Kind of a standard entry (extended entries refine it per subcluster with the bitmap). */
export function l2Kind(t: Buffer, i: number, l: L2Layout): number {
  const o = i * l.entrySize;
  const hi = t.readUInt32BE(o);
  if (hi & COMPRESSED_HI) return KIND_COMPRESSED;
  const lo = t.readUInt32BE(o + 4);
  if (!l.extended && lo & 1) return KIND_ZERO;
  if ((hi & OFFSET_HI_MASK) === 0 && (lo & OFFSET_LO_MASK) === 0 && !(l.dataFile && hi & COPIED_HI)) return KIND_UNALLOCATED;
  return KIND_NORMAL;
}

/** Host cluster offset of a normal (or preallocated zero) entry. */
export function l2HostOffset(t: Buffer, i: number, l: L2Layout): number {
  const o = i * l.entrySize;
  return (t.readUInt32BE(o) & OFFSET_HI_MASK) * TWO32 + ((t.readUInt32BE(o + 4) & OFFSET_LO_MASK) >>> 0);
}

export function l2Copied(t: Buffer, i: number, l: L2Layout): boolean {
  return (t.readUInt32BE(i * l.entrySize) & COPIED_HI) !== 0;
}

/**
 * A table's 32-bit words in host order: a copy into `scratch`, byte-swapped natively. Loops over
 * every entry of many tables (check, repair) read them from this without a call per word.
 * Standard entry j: hi = words[j * stride], lo = words[j * stride + 1], stride = entrySize / 4.
 */
export function tableWords(t: Buffer, scratch: Buffer): Uint32Array {
  const b = scratch.subarray(0, t.length);
  t.copy(b);
  b.swap32();
  return new Uint32Array(b.buffer, b.byteOffset, t.length / 4);
}

/** The host offset bits of a standard entry's two words (normal and preallocated zero entries). */
export function hostOf(hi: number, lo: number): number {
  return (hi & OFFSET_HI_MASK) * TWO32 + ((lo & OFFSET_LO_MASK) >>> 0);
}

/** Compressed entry: where the compressed bytes start and how many there may be. */
export function l2Compressed(t: Buffer, i: number, l: L2Layout): { host: number; size: number } {
  const o = i * l.entrySize;
  const hi = t.readUInt32BE(o) & 0x3fffffff;
  const lo = t.readUInt32BE(o + 4);
  const x = 62 - (l.clusterBits - 8); // offset bits
  const hiBits = x - 32;
  const host = (hi & ((1 << hiBits) - 1)) * TWO32 + lo;
  const sectors = hi >>> hiBits;
  return { host, size: (sectors + 1) * 512 - (host % 512) };
}

/** Extended L2 bitmap: [alloc bits, zero bits]. */
export function l2AllocBits(t: Buffer, i: number, l: L2Layout): number {
  return t.readUInt32BE(i * l.entrySize + 12);
}
export function l2ZeroBits(t: Buffer, i: number, l: L2Layout): number {
  return t.readUInt32BE(i * l.entrySize + 8);
}

export function setL2Normal(t: Buffer, i: number, l: L2Layout, host: number, copied: boolean): void {
  const o = i * l.entrySize;
  t.writeUInt32BE(((Math.floor(host / TWO32) & OFFSET_HI_MASK) | (copied ? COPIED_HI : 0)) >>> 0, o);
  t.writeUInt32BE((host % TWO32) >>> 0, o + 4);
  if (l.extended) {
    t.writeUInt32BE(0, o + 8);
    t.writeUInt32BE(0xffffffff, o + 12);
  }
}

/** The whole cluster reads as zeros, with no host cluster. */
export function setL2Zero(t: Buffer, i: number, l: L2Layout): void {
  const o = i * l.entrySize;
  t.writeUInt32BE(0, o);
  if (l.extended) {
    t.writeUInt32BE(0, o + 4);
    t.writeUInt32BE(0xffffffff, o + 8);
    t.writeUInt32BE(0, o + 12);
  } else {
    t.writeUInt32BE(1, o + 4);
  }
}

/** Clears the COPIED flag (L2 or L1 word 0). */
export function clearCopied(t: Buffer, byteOffset: number): void {
  t.writeUInt32BE((t.readUInt32BE(byteOffset) & ~COPIED_HI) >>> 0, byteOffset);
}

/** Extended entry with explicit subcluster bitmaps (alloc: bits allocated, zero: bits reading as zeros). */
export function setL2Extended(t: Buffer, i: number, l: L2Layout, host: number, copied: boolean, alloc: number, zero: number): void {
  const o = i * l.entrySize;
  t.writeUInt32BE(((Math.floor(host / TWO32) & OFFSET_HI_MASK) | (copied ? COPIED_HI : 0)) >>> 0, o);
  t.writeUInt32BE((host % TWO32) >>> 0, o + 4);
  t.writeUInt32BE(zero >>> 0, o + 8);
  t.writeUInt32BE(alloc >>> 0, o + 12);
}

/** Bit mask of subclusters [first, end). */
export function subclusterMask(first: number, end: number): number {
  return ((2 ** (end - first) - 1) * 2 ** first) >>> 0;
}

/** Standard entry: reads as zeros but keeps its (private) host cluster: COPIED | offset | bit 0. */
export function setL2ZeroAllocated(t: Buffer, i: number, host: number): void {
  const o = i * 8;
  t.writeUInt32BE(((Math.floor(host / TWO32) & OFFSET_HI_MASK) | COPIED_HI) >>> 0, o);
  t.writeUInt32BE(((host % TWO32) | 1) >>> 0, o + 4);
}
