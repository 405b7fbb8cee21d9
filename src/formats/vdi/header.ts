/**
 * The VDI pre-header and header, version 1.1 (VirtualBox's VDICore.h: VDIPREHEADER +
 * VDIHEADER1PLUS; QEMU's block/vdi.c VdiHeader has the same layout). Little-endian throughout.
 * Everything an image says is checked here, before anything is sized from it.
 */
import { randomBytes } from 'node:crypto';
import { VdiskError } from '../../io/errors';

export const SECTOR = 512;
/** u32Signature of the pre-header. */
export const VDI_SIGNATURE = 0xbeda107f;
/** u32Version: major 1, minor 1 (the only version VirtualBox and QEMU write). */
export const VDI_VERSION_1_1 = 0x00010001;
/** The whole header region QEMU and VirtualBox reserve before the block map. */
export const HEADER_BYTES = 0x200;
/** Block map entry: block not allocated (reads from the parent, or zeros). VDI_IMAGE_BLOCK_FREE. */
export const ENTRY_FREE = 0xffffffff;
/** Block map entry: block reads as zeros. VDI_IMAGE_BLOCK_ZERO. */
export const ENTRY_ZERO = 0xfffffffe;
/** A map bigger than this is not an image anyone made (16 Mi blocks: 16 TiB at 1 MiB). */
export const MAX_BLOCKS = 16 << 20;
export const MAX_BLOCK_SIZE = 256 << 20;

/** u32Type. */
export const IMAGE_TYPES = { 1: 'normal', 2: 'fixed', 3: 'undo', 4: 'diff' } as const;
export type ImageType = keyof typeof IMAGE_TYPES;

export const QEMU_TEXT = '<<< QEMU VM Virtual Disk Image >>>\n';

const OFF = {
  text: 0x00, // szFileInfo[64]: free text
  signature: 0x40,
  version: 0x44,
  headerSize: 0x48, // cbHeader: size of the header that follows (0x180 QEMU, 0x190 VirtualBox)
  type: 0x4c,
  flags: 0x50,
  comment: 0x54, // szComment[256]
  offsetBmap: 0x154, // offBlocks: byte offset of the block map
  offsetData: 0x158, // offData: byte offset of block data
  cylinders: 0x15c, // legacy geometry
  heads: 0x160,
  sectors: 0x164,
  sectorSize: 0x168,
  diskSize: 0x170, // cbDisk: u64
  blockSize: 0x178, // cbBlock
  blockExtra: 0x17c, // cbBlockExtra: bytes before each block's data
  blocks: 0x180, // cBlocks
  blocksAllocated: 0x184, // cBlocksAllocated
  uuidCreate: 0x188, // this image's UUID
  uuidModify: 0x198, // changes when the image is modified (VirtualBox)
  uuidLinkage: 0x1a8, // diff: the parent's uuidCreate
  uuidParentModify: 0x1b8, // diff: the parent's uuidModify when this child was made
} as const;

export interface VdiHeader {
  text: string;
  headerSize: number;
  type: ImageType;
  offsetBmap: number;
  offsetData: number;
  diskSize: number;
  blockSize: number;
  blockExtra: number;
  blocks: number;
  blocksAllocated: number;
  uuidCreate: Buffer;
  uuidModify: Buffer;
  uuidLinkage: Buffer;
  uuidParentModify: Buffer;
}

export function looksLikeVdi(head: Buffer): boolean {
  return head.length >= 0x48 && head.readUInt32LE(OFF.signature) === VDI_SIGNATURE;
}

/** Parses and checks the header at the start of `buf` (at least HEADER_BYTES). */
export function parseHeader(buf: Buffer, file: string): VdiHeader {
  const bad = (why: string) => VdiskError.corrupt(`${file}: VDI header ${why}`);
  if (buf.length < HEADER_BYTES) throw bad('is truncated');
  if (buf.readUInt32LE(OFF.signature) !== VDI_SIGNATURE) throw bad('has no VDI signature');
  const version = buf.readUInt32LE(OFF.version);
  if (version !== VDI_VERSION_1_1)
    throw VdiskError.unsupported(`${file}: VDI version ${version >>> 16}.${version & 0xffff} is not supported (only 1.1)`);
  const headerSize = buf.readUInt32LE(OFF.headerSize);
  if (headerSize < 0x180 || OFF.headerSize + headerSize > HEADER_BYTES) throw bad(`size ${headerSize} is not 384..440`);
  const type = buf.readUInt32LE(OFF.type);
  if (!(type in IMAGE_TYPES)) throw bad(`type ${type} is unknown`);
  const diskSizeBig = buf.readBigUInt64LE(OFF.diskSize);
  const blockSize = buf.readUInt32LE(OFF.blockSize);
  const blockExtra = buf.readUInt32LE(OFF.blockExtra);
  const blocks = buf.readUInt32LE(OFF.blocks);
  const offsetBmap = buf.readUInt32LE(OFF.offsetBmap);
  const offsetData = buf.readUInt32LE(OFF.offsetData);
  if (blockSize < SECTOR || blockSize > MAX_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0)
    throw bad(`block size ${blockSize} is not a power of two from 512 bytes to 256 MiB`);
  if (blockExtra % SECTOR !== 0 || blockExtra > MAX_BLOCK_SIZE)
    throw bad(`block extra ${blockExtra} is not a multiple of 512 up to 256 MiB`);
  if (blocks > MAX_BLOCKS) throw bad(`counts ${blocks} blocks (more than ${MAX_BLOCKS})`);
  if (diskSizeBig > BigInt(blocks) * BigInt(blockSize))
    throw bad(`disk size ${diskSizeBig} is larger than its ${blocks} blocks of ${blockSize}`);
  // 'VBoxManage convertfromraw' makes odd sizes; QEMU (block/vdi.c) drops the partial sector.
  const diskSize = Number(diskSizeBig) - (Number(diskSizeBig) % SECTOR);
  if (offsetBmap % SECTOR !== 0 || offsetBmap < OFF.headerSize + headerSize)
    throw bad(`block map offset ${offsetBmap} overlaps the header or is unaligned`);
  if (offsetData % SECTOR !== 0 || offsetData < offsetBmap + blocks * 4)
    throw bad(`data offset ${offsetData} overlaps the block map or is unaligned`);
  return {
    text: buf.toString('latin1', 0, 0x40).replace(/\0.*$/s, ''),
    headerSize,
    type: type as ImageType,
    offsetBmap,
    offsetData,
    diskSize,
    blockSize,
    blockExtra,
    blocks,
    blocksAllocated: buf.readUInt32LE(OFF.blocksAllocated),
    uuidCreate: Buffer.from(buf.subarray(OFF.uuidCreate, OFF.uuidCreate + 16)),
    uuidModify: Buffer.from(buf.subarray(OFF.uuidModify, OFF.uuidModify + 16)),
    uuidLinkage: Buffer.from(buf.subarray(OFF.uuidLinkage, OFF.uuidLinkage + 16)),
    uuidParentModify: Buffer.from(buf.subarray(OFF.uuidParentModify, OFF.uuidParentModify + 16)),
  };
}

/** Writes cBlocksAllocated into a header region kept in memory. */
export function setBlocksAllocated(region: Buffer, n: number): void {
  region.writeUInt32LE(n, OFF.blocksAllocated);
}

/** A new header region of HEADER_BYTES, as qemu-img create -f vdi writes it. */
export function serializeHeader(h: Omit<VdiHeader, 'text' | 'headerSize'> & { text?: string }): Buffer {
  const b = Buffer.alloc(HEADER_BYTES);
  b.write(h.text ?? QEMU_TEXT, OFF.text, 0x40, 'latin1');
  b.writeUInt32LE(VDI_SIGNATURE, OFF.signature);
  b.writeUInt32LE(VDI_VERSION_1_1, OFF.version);
  b.writeUInt32LE(0x180, OFF.headerSize);
  b.writeUInt32LE(h.type, OFF.type);
  b.writeUInt32LE(h.offsetBmap, OFF.offsetBmap);
  b.writeUInt32LE(h.offsetData, OFF.offsetData);
  b.writeUInt32LE(SECTOR, OFF.sectorSize);
  b.writeBigUInt64LE(BigInt(h.diskSize), OFF.diskSize);
  b.writeUInt32LE(h.blockSize, OFF.blockSize);
  b.writeUInt32LE(h.blockExtra, OFF.blockExtra);
  b.writeUInt32LE(h.blocks, OFF.blocks);
  b.writeUInt32LE(h.blocksAllocated, OFF.blocksAllocated);
  h.uuidCreate.copy(b, OFF.uuidCreate);
  h.uuidModify.copy(b, OFF.uuidModify);
  h.uuidLinkage.copy(b, OFF.uuidLinkage);
  h.uuidParentModify.copy(b, OFF.uuidParentModify);
  return b;
}

/** A random (version 4) UUID in VirtualBox's byte order. */
export function newUuid(): Buffer {
  const u = randomBytes(16);
  u[7] = (u[7]! & 0x0f) | 0x40; // RTUUID stores the first three fields little-endian
  u[8] = (u[8]! & 0x3f) | 0x80;
  return u;
}

/** A UUID stored as RTUUID (first three fields little-endian), printed the usual way. */
export function formatUuid(u: Buffer): string {
  const h = (a: number, b: number, le: boolean) => {
    const s = u.subarray(a, b);
    return Buffer.from(le ? [...s].reverse() : s).toString('hex');
  };
  return `${h(0, 4, true)}-${h(4, 6, true)}-${h(6, 8, true)}-${h(8, 10, false)}-${h(10, 16, false)}`;
}

export const isNullUuid = (u: Buffer): boolean => u.every((x) => x === 0);
