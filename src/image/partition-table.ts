/**
 * Reading a disk's partition table (MBR with primary and logical partitions, or GPT) from its raw
 * view, to show each partition as a file of its own. Numbering follows Linux (sda1..4 are the MBR
 * slots, logical partitions start at 5; GPT entry i is partition i+1), so `p2` means what
 * `/dev/loop0p2` would.
 *
 * The table is untrusted: a partition past the end of the disk, overlapping another, or a chain
 * of logical partitions that loops makes the whole table "damaged" (no partition files, one log
 * line), never a crash. Only the sectors the table needs are read.
 */
import * as zlib from 'node:zlib';

export const SECTOR = 512;

export interface Partition {
  /** Linux partition number (1-based). */
  number: number;
  /** Byte offset and size inside the disk. */
  offset: number;
  size: number;
  scheme: 'mbr' | 'gpt';
  /** MBR type byte as two hex digits, or the GPT type GUID. */
  type: string;
  name?: string;
}

export type PartitionTable = { kind: 'none' } | { kind: 'damaged'; reason: string } | { kind: 'mbr' | 'gpt'; partitions: Partition[] };

/** Reads `length` bytes of the disk at `offset` (zeros past its end). */
export type ReadDisk = (offset: number, length: number) => Promise<Buffer>;

const MBR_SIGNATURE = 0xaa55;
const MBR_ENTRIES = 446;
const GPT_PROTECTIVE = 0xee;
const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);
/** Linux stops at a few hundred logical partitions; a longer chain is a loop or hostile. */
const MAX_LOGICAL = 128;
const GPT_SIGNATURE = 'EFI PART';
/** GPT tables hold 128 entries as a rule; more than this is absurd for a disk view. */
const MAX_GPT_ENTRIES = 4096;

/** The sectors that hold the partition table(s): a write there invalidates the list. */
export function tableSectorsEnd(table: PartitionTable): number {
  return table.kind === 'gpt' ? 34 * SECTOR : SECTOR;
}

export async function readPartitionTable(read: ReadDisk, diskSize: number): Promise<PartitionTable> {
  if (diskSize < 2 * SECTOR) return { kind: 'none' };
  const mbr = await read(0, SECTOR);
  if (mbr.readUInt16LE(510) !== MBR_SIGNATURE) return { kind: 'none' };
  const slots = [0, 1, 2, 3].map((i) => entryAt(mbr, MBR_ENTRIES + 16 * i));
  // A GPT disk carries a protective MBR; a GPT header without one is not trusted (as Linux).
  if (slots.some((s) => s.type === GPT_PROTECTIVE)) {
    const gpt = await readGpt(read, diskSize);
    if (gpt) return validate(gpt, diskSize);
  }
  // Not an MBR at all: a FAT/NTFS boot sector also ends in 55AA. Status bytes must be 0 or 0x80.
  if (slots.some((s) => s.status !== 0 && s.status !== 0x80)) return { kind: 'none' };
  const parts: Partition[] = [];
  let extended: { start: number; size: number } | undefined;
  for (let i = 0; i < 4; i++) {
    const s = slots[i]!;
    if (s.type === 0 || s.sectors === 0) continue;
    if (EXTENDED_TYPES.has(s.type)) {
      if (extended) return { kind: 'damaged', reason: 'two extended partitions' };
      extended = { start: s.lba, size: s.sectors };
      continue;
    }
    parts.push({ number: i + 1, offset: s.lba * SECTOR, size: s.sectors * SECTOR, scheme: 'mbr', type: hex2(s.type) });
  }
  if (extended) {
    const logical = await readLogical(read, extended, diskSize);
    if ('reason' in logical) return { kind: 'damaged', reason: logical.reason };
    parts.push(...logical);
  }
  if (parts.length === 0) return { kind: 'none' };
  return validate({ kind: 'mbr', partitions: parts }, diskSize);
}

interface MbrEntry {
  status: number;
  type: number;
  lba: number;
  sectors: number;
}

function entryAt(b: Buffer, off: number): MbrEntry {
  return { status: b[off]!, type: b[off + 4]!, lba: b.readUInt32LE(off + 8), sectors: b.readUInt32LE(off + 12) };
}

/** Logical partitions: a chain of EBRs, each naming one partition and where the next EBR is. */
async function readLogical(
  read: ReadDisk,
  ext: { start: number; size: number },
  diskSize: number,
): Promise<Partition[] | { reason: string }> {
  const out: Partition[] = [];
  const seen = new Set<number>();
  let ebr = ext.start;
  for (let n = 5; ; n++) {
    if (seen.has(ebr)) return { reason: `the chain of logical partitions loops (EBR at sector ${ebr})` };
    if (seen.size >= MAX_LOGICAL) return { reason: `more than ${MAX_LOGICAL} logical partitions` };
    seen.add(ebr);
    if ((ebr + 1) * SECTOR > diskSize) return { reason: `an extended boot record lies past the end of the disk (sector ${ebr})` };
    const b = await read(ebr * SECTOR, SECTOR);
    if (b.readUInt16LE(510) !== MBR_SIGNATURE) {
      // An empty extended partition (no EBR written yet) has no logical partitions.
      if (n === 5) return out;
      return { reason: `extended boot record at sector ${ebr} has no signature` };
    }
    const part = entryAt(b, MBR_ENTRIES);
    const next = entryAt(b, MBR_ENTRIES + 16);
    if (part.type !== 0 && part.sectors !== 0) {
      const start = ebr + part.lba;
      if (start + part.sectors > ext.start + ext.size) return { reason: `logical partition ${n} reaches past its extended partition` };
      out.push({ number: n, offset: start * SECTOR, size: part.sectors * SECTOR, scheme: 'mbr', type: hex2(part.type) });
    } else n--; // an EBR without a partition (fdisk leaves none, but others may): no number used
    if (next.type === 0 || next.lba === 0) return out;
    ebr = ext.start + next.lba;
  }
}

async function readGpt(read: ReadDisk, diskSize: number): Promise<PartitionTable | undefined> {
  const h = await read(SECTOR, SECTOR);
  if (h.toString('latin1', 0, 8) !== GPT_SIGNATURE) return undefined;
  const headerSize = h.readUInt32LE(12);
  if (headerSize < 92 || headerSize > SECTOR) return { kind: 'damaged', reason: `GPT header size ${headerSize} is invalid` };
  const copy = Buffer.from(h.subarray(0, headerSize));
  const crc = copy.readUInt32LE(16);
  copy.writeUInt32LE(0, 16);
  if (zlib.crc32(copy) !== crc) return { kind: 'damaged', reason: 'GPT header checksum does not match' };
  const entriesLba = Number(h.readBigUInt64LE(72));
  const count = h.readUInt32LE(80);
  const entrySize = h.readUInt32LE(84);
  const entriesCrc = h.readUInt32LE(88);
  if (entrySize < 128 || entrySize % 8 !== 0 || entrySize > 4096)
    return { kind: 'damaged', reason: `GPT entry size ${entrySize} is invalid` };
  if (count > MAX_GPT_ENTRIES) return { kind: 'damaged', reason: `GPT claims ${count} partition entries` };
  const bytes = count * entrySize;
  if (!Number.isSafeInteger(entriesLba) || entriesLba * SECTOR + bytes > diskSize)
    return { kind: 'damaged', reason: 'GPT partition entries lie past the end of the disk' };
  const entries = await read(entriesLba * SECTOR, bytes);
  if (zlib.crc32(entries) !== entriesCrc) return { kind: 'damaged', reason: 'GPT partition entries checksum does not match' };
  const parts: Partition[] = [];
  for (let i = 0; i < count; i++) {
    const e = entries.subarray(i * entrySize, (i + 1) * entrySize);
    if (e.subarray(0, 16).every((x) => x === 0)) continue;
    const first = e.readBigUInt64LE(32);
    const last = e.readBigUInt64LE(40);
    if (last < first) return { kind: 'damaged', reason: `GPT partition ${i + 1} ends before it starts` };
    const offset = Number(first) * SECTOR;
    const size = (Number(last - first) + 1) * SECTOR;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(size))
      return { kind: 'damaged', reason: `GPT partition ${i + 1} is out of range` };
    const name = e.subarray(56, 128).toString('utf16le').replace(/\0.*$/s, '');
    parts.push({ number: i + 1, offset, size, scheme: 'gpt', type: guid(e.subarray(0, 16)), ...(name ? { name } : {}) });
  }
  return { kind: 'gpt', partitions: parts };
}

/** Every partition inside the disk, none overlapping another. */
function validate(t: PartitionTable, diskSize: number): PartitionTable {
  if (t.kind !== 'mbr' && t.kind !== 'gpt') return t;
  const sorted = [...t.partitions].sort((a, b) => a.offset - b.offset);
  for (let i = 0; i < sorted.length; i++) {
    const p = sorted[i]!;
    if (p.offset === 0 && t.kind === 'mbr')
      return { kind: 'damaged', reason: `partition ${p.number} starts at sector 0, over the partition table` };
    if (p.offset + p.size > diskSize) return { kind: 'damaged', reason: `partition ${p.number} reaches past the end of the disk` };
    const next = sorted[i + 1];
    if (next && next.offset < p.offset + p.size) return { kind: 'damaged', reason: `partitions ${p.number} and ${next.number} overlap` };
  }
  return { kind: t.kind, partitions: t.partitions.sort((a, b) => a.number - b.number) };
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

/** A GPT GUID as text: the first three fields are little-endian on disk. */
function guid(b: Buffer): string {
  const h = (s: Buffer) => s.toString('hex');
  const le = (s: Buffer) => h(Buffer.from(s).reverse());
  return `${le(b.subarray(0, 4))}-${le(b.subarray(4, 6))}-${le(b.subarray(6, 8))}-${h(b.subarray(8, 10))}-${h(b.subarray(10, 16))}`;
}
