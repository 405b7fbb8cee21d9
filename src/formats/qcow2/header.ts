/**
 * The qcow2 header (qemu/qemu docs/interop/qcow2.txt, "Header"). Big-endian. Version 2 ends at
 * byte 72; version 3 adds feature bitmaps, refcount_order and header_length (>= 104; 112 when
 * the compression type byte is present).
 */
import { VdiskError } from '../../io/errors';
import { readU64, writeU64 } from '../../io/safe-int';

export const MAGIC = 0x514649fb; // "QFI\xfb"
export const V2_SIZE = 72;
export const V3_MIN_SIZE = 104;
export const V3_SIZE = 112;

// Incompatible feature bits.
export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
export const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
// Compatible feature bits.
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
// Autoclear feature bits (bit 0: bitmaps consistent, bit 1: data file is raw).
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;

// Limits QEMU enforces (block/qcow2.h): beyond them an image is hostile.
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
export const MAX_L1_BYTES = 32 << 20;
export const MAX_REFTABLE_BYTES = 8 << 20;
export const MAX_SNAPSHOTS = 65536;
export const MAX_SNAPSHOT_TABLE_BYTES = 64 << 20;
export const MAX_BACKING_NAME = 1023;

export interface Header {
  version: 2 | 3;
  backingFileOffset: number; // where the backing file name lives (in cluster 0), 0 = none
  backingFileSize: number; // name length, bytes, no NUL
  clusterBits: number; // 1 << cluster_bits = cluster size
  size: number; // virtual disk size, bytes
  cryptMethod: number; // 0 none, 1 AES (refused), 2 LUKS (refused)
  l1Size: number; // active L1 entries
  l1TableOffset: number; // host offset of the active L1, cluster aligned
  refcountTableOffset: number; // host offset of the refcount table, cluster aligned
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatible: bigint; // v3 feature bitmaps (0 for v2)
  compatible: bigint;
  autoclear: bigint;
  refcountOrder: number; // refcount_bits = 1 << refcount_order (v2: 4)
  headerLength: number; // v2: 72
  compressionType: number; // 0 zlib, 1 zstd
}

export function parseHeader(buf: Buffer): Header {
  if (buf.length < V2_SIZE) throw VdiskError.corrupt('qcow2 header truncated');
  if (buf.readUInt32BE(0) !== MAGIC) throw VdiskError.corrupt('not a qcow2 image (bad magic)');
  const version = buf.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw VdiskError.unsupported(`qcow2 version ${version} is not supported (only 2 and 3)`);
  const h: Header = {
    version,
    backingFileOffset: readU64(buf, 8, 'backing_file_offset'),
    backingFileSize: buf.readUInt32BE(16),
    clusterBits: buf.readUInt32BE(20),
    size: readU64(buf, 24, 'size'),
    cryptMethod: buf.readUInt32BE(32),
    l1Size: buf.readUInt32BE(36),
    l1TableOffset: readU64(buf, 40, 'l1_table_offset'),
    refcountTableOffset: readU64(buf, 48, 'refcount_table_offset'),
    refcountTableClusters: buf.readUInt32BE(56),
    nbSnapshots: buf.readUInt32BE(60),
    snapshotsOffset: readU64(buf, 64, 'snapshots_offset'),
    incompatible: 0n,
    compatible: 0n,
    autoclear: 0n,
    refcountOrder: 4,
    headerLength: V2_SIZE,
    compressionType: 0,
  };
  if (version === 3) {
    if (buf.length < V3_MIN_SIZE) throw VdiskError.corrupt('qcow2 v3 header truncated');
    h.incompatible = buf.readBigUInt64BE(72);
    h.compatible = buf.readBigUInt64BE(80);
    h.autoclear = buf.readBigUInt64BE(88);
    h.refcountOrder = buf.readUInt32BE(96);
    h.headerLength = buf.readUInt32BE(100);
    if (h.headerLength < V3_MIN_SIZE || h.headerLength % 8 !== 0) throw VdiskError.corrupt(`qcow2 header_length ${h.headerLength} invalid`);
    if (h.headerLength > 104) h.compressionType = buf.readUInt8(104);
  }
  validate(h);
  return h;
}

function validate(h: Header): void {
  const cs = 2 ** h.clusterBits;
  if (h.clusterBits < MIN_CLUSTER_BITS || h.clusterBits > MAX_CLUSTER_BITS)
    throw VdiskError.corrupt(`qcow2 cluster_bits ${h.clusterBits} out of range 9..21`);
  if (h.headerLength > cs) throw VdiskError.corrupt('qcow2 header_length larger than a cluster');
  if (h.refcountOrder > 6) throw VdiskError.corrupt(`qcow2 refcount_order ${h.refcountOrder} > 6`);
  if (h.cryptMethod !== 0) throw VdiskError.unsupported(`qcow2 encryption (crypt_method ${h.cryptMethod}) is not supported`);
  if (h.l1Size * 8 > MAX_L1_BYTES) throw VdiskError.corrupt(`qcow2 L1 size too big (${h.l1Size} entries)`);
  if (h.refcountTableClusters * cs > MAX_REFTABLE_BYTES)
    throw VdiskError.corrupt(`qcow2 refcount table too big (${h.refcountTableClusters} clusters)`);
  if (h.refcountTableClusters === 0) throw VdiskError.corrupt('qcow2 refcount table has no clusters');
  for (const [name, off] of [
    ['l1_table_offset', h.l1TableOffset],
    ['refcount_table_offset', h.refcountTableOffset],
    ['snapshots_offset', h.snapshotsOffset],
  ] as const) {
    if (off % cs !== 0) throw VdiskError.corrupt(`qcow2 ${name} ${off} not cluster aligned`);
  }
  if (h.nbSnapshots > MAX_SNAPSHOTS) throw VdiskError.corrupt(`qcow2 too many snapshots (${h.nbSnapshots})`);
  const l2Bits = h.clusterBits - 3 - ((h.incompatible & INCOMPAT_EXTL2) !== 0n ? 1 : 0);
  const needL1 = Math.ceil(h.size / 2 ** (h.clusterBits + l2Bits));
  if (needL1 > h.l1Size) throw VdiskError.corrupt(`qcow2 L1 table too small for the disk size (${h.l1Size} < ${needL1})`);
  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize > MAX_BACKING_NAME || h.backingFileOffset + h.backingFileSize > cs)
      throw VdiskError.corrupt('qcow2 backing file name too long or outside the first cluster');
  }
  if (h.compressionType > 1) throw VdiskError.unsupported(`qcow2 compression type ${h.compressionType} unknown`);
  if (h.compressionType !== 0 && (h.incompatible & INCOMPAT_COMPRESSION) === 0n)
    throw VdiskError.corrupt('qcow2 compression type set without its incompatible bit');
}

/** The fixed fields only (extensions follow at headerLength; callers keep them). */
export function serializeHeader(h: Header): Buffer {
  const buf = Buffer.alloc(h.version === 2 ? V2_SIZE : h.headerLength);
  buf.writeUInt32BE(MAGIC, 0);
  buf.writeUInt32BE(h.version, 4);
  writeU64(buf, 8, h.backingFileOffset);
  buf.writeUInt32BE(h.backingFileSize, 16);
  buf.writeUInt32BE(h.clusterBits, 20);
  writeU64(buf, 24, h.size);
  buf.writeUInt32BE(h.cryptMethod, 32);
  buf.writeUInt32BE(h.l1Size, 36);
  writeU64(buf, 40, h.l1TableOffset);
  writeU64(buf, 48, h.refcountTableOffset);
  buf.writeUInt32BE(h.refcountTableClusters, 56);
  buf.writeUInt32BE(h.nbSnapshots, 60);
  writeU64(buf, 64, h.snapshotsOffset);
  if (h.version === 3) {
    buf.writeBigUInt64BE(h.incompatible, 72);
    buf.writeBigUInt64BE(h.compatible, 80);
    buf.writeBigUInt64BE(h.autoclear, 88);
    buf.writeUInt32BE(h.refcountOrder, 96);
    buf.writeUInt32BE(h.headerLength, 100);
    if (h.headerLength > 104) buf.writeUInt8(h.compressionType, 104);
  }
  return buf;
}

/** Highest set bit numbers of `bits` (for naming unknown feature bits). */
export function bitNumbers(bits: bigint): number[] {
  const out: number[] = [];
  for (let i = 0; i < 64; i++) if ((bits >> BigInt(i)) & 1n) out.push(i);
  return out;
}

// Field offsets of the fields written in place after creation (qcow2.txt "Header").
const SIZE_OFFSET = 24; // size, then crypt_method (32), l1_size (36), l1_table_offset (40)
const REFCOUNT_TABLE_OFFSET = 48; // refcount_table_offset, then refcount_table_clusters (56)
const INCOMPATIBLE_OFFSET = 72;
const AUTOCLEAR_OFFSET = 88;

/** Header bytes to write in place: `bytes` at file offset `at`. */
export interface HeaderPatch {
  at: number;
  bytes: Buffer;
}

/** size, crypt_method (0), l1_size, l1_table_offset: what a resize changes, in one write. */
export function sizeAndL1Patch(size: number, l1Size: number, l1TableOffset: number): HeaderPatch {
  const bytes = Buffer.alloc(24);
  writeU64(bytes, 0, size);
  bytes.writeUInt32BE(0, 8);
  bytes.writeUInt32BE(l1Size, 12);
  writeU64(bytes, 16, l1TableOffset);
  return { at: SIZE_OFFSET, bytes };
}

/** refcount_table_offset and refcount_table_clusters, in one write. */
export function refcountTablePatch(offset: number, clusters: number): HeaderPatch {
  const bytes = Buffer.alloc(12);
  writeU64(bytes, 0, offset);
  bytes.writeUInt32BE(clusters, 8);
  return { at: REFCOUNT_TABLE_OFFSET, bytes };
}

/** incompatible_features (v3 only). */
export function incompatiblePatch(bits: bigint): HeaderPatch {
  return featurePatch(INCOMPATIBLE_OFFSET, bits);
}

/** autoclear_features (v3 only). */
export function autoclearPatch(bits: bigint): HeaderPatch {
  return featurePatch(AUTOCLEAR_OFFSET, bits);
}

function featurePatch(at: number, bits: bigint): HeaderPatch {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64BE(bits);
  return { at, bytes };
}
