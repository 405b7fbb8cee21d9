/**
 * Reading a VHDX file at open: file identifier, current header, the log (replayed on disk for a
 * writable open, into an in-memory overlay for a read-only one), region table, metadata and the
 * whole BAT. Everything read after the log step goes through the overlay, so a read-only view
 * sees the replayed metadata without the file changing.
 */
import { HostFile } from '../../io/host-file';
import { VdiskError } from '../../io/errors';
import * as bat from './bat';
import { isVhdx, parseCreator } from './file-identifier';
import { isNullGuid } from './guid';
import { checkHeader, currentHeader, HEADER_OFFSETS, HEADER_SIZE, type VhdxHeader } from './header';
import { HeaderSlots } from './header-slots';
import { findActiveSequence, replayPlan, ReplayOverlay, type ReplayPlan } from './log-replay';
import { METADATA_TABLE_SIZE, metadataEntries, parseMetadata, type VhdxMetadata } from './metadata';
import { parseRegionTable, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, type RegionTable } from './region-table';

/** The largest log read into memory for replay (QEMU and Hyper-V make 1 MiB logs by default). */
const MAX_LOG = 256 * 1024 * 1024;

export interface VhdxLayout {
  fileSize: number;
  creator: string;
  header: VhdxHeader;
  slot: 0 | 1;
  regions: RegionTable;
  meta: VhdxMetadata;
  geometry: bat.BatGeometry;
  /** The BAT as stored (entries * 8 bytes, rounded up to whole 4 KiB sectors). */
  bat: Buffer;
  /** Read-only open of a file whose log needed replay: the replayed writes, kept in memory. */
  overlay: ReplayOverlay | undefined;
  /** The log entries replayed (on disk or in memory) at open. */
  replayed: number;
}

/** The log's active sequence, if the current header says there is a log (non-null LogGuid). */
export async function readReplayPlan(file: string, f: HostFile, h: VhdxHeader, fileSize: number): Promise<ReplayPlan | undefined> {
  if (isNullGuid(h.logGuid) || h.logLength === 0) return undefined;
  if (h.logLength > MAX_LOG)
    throw VdiskError.unsupported(`${file}: a log of ${h.logLength} bytes to replay (at most ${MAX_LOG} supported)`);
  const log = Buffer.alloc(h.logLength);
  await f.read(log, h.logOffset, 'log');
  const entries = findActiveSequence(file, log, h.logGuid);
  if (!entries) return undefined;
  return replayPlan(file, entries, fileSize, { offset: h.logOffset, length: h.logLength });
}

/** Replays on disk in the spec's order: the writes, the file's growth, a flush; then the header says the log is empty. */
export async function replayOnDisk(f: HostFile, plan: ReplayPlan, slots: HeaderSlots): Promise<void> {
  for (const w of plan.writes) {
    if (w.data) await f.write(w.data, w.offset, 'log');
    else {
      const zero = Buffer.alloc(Math.min(w.length, 1 << 20));
      for (let done = 0; done < w.length; done += zero.length)
        await f.write(zero.subarray(0, Math.min(zero.length, w.length - done)), w.offset + done, 'log');
    }
  }
  if ((await f.size()) < plan.lastFileOffset) await f.truncate(Math.ceil(plan.lastFileOffset / bat.MiB) * bat.MiB);
  await f.datasync('log');
  await slots.update({ logGuid: Buffer.alloc(16) });
  await f.datasync('header');
}

export async function readLayout(file: string, f: HostFile, writable: boolean, lenient = false): Promise<VhdxLayout> {
  let fileSize = await f.size();
  const id = Buffer.alloc(4096);
  await f.read(id, 0, 'header');
  if (!isVhdx(id)) throw VdiskError.corrupt(`${file}: no "vhdxfile" signature at offset 0`);
  const hb: [Buffer, Buffer] = [Buffer.alloc(HEADER_SIZE), Buffer.alloc(HEADER_SIZE)];
  await Promise.all(hb.map((b, i) => f.read(b, HEADER_OFFSETS[i]!, 'header')));
  let { header, slot } = currentHeader(file, hb);
  checkHeader(file, header, fileSize);
  let overlay: ReplayOverlay | undefined;
  let replayed = 0;
  const plan = await readReplayPlan(file, f, header, fileSize);
  if (plan) {
    replayed = plan.entries.length;
    if (writable) {
      const slots = new HeaderSlots(f, header, slot);
      await replayOnDisk(f, plan, slots);
      header = slots.header;
      slot = slots.slot;
      fileSize = await f.size();
    } else {
      overlay = new ReplayOverlay(plan.writes);
      fileSize = Math.max(fileSize, plan.lastFileOffset);
    }
  }
  const readMeta = async (len: number, pos: number): Promise<Buffer> => {
    const b = Buffer.alloc(len);
    await f.read(b, pos, 'metadata');
    overlay?.apply(b, pos);
    return b;
  };
  let regions: RegionTable | undefined;
  const why: string[] = [];
  for (const at of REGION_TABLE_OFFSETS) {
    const r = parseRegionTable(file, await readMeta(REGION_TABLE_SIZE, at), fileSize);
    if (typeof r !== 'string') {
      regions = r;
      break;
    }
    why.push(r);
  }
  if (!regions) throw VdiskError.corrupt(`${file}: neither region table is valid (${why.join('; ')})`);
  for (const r of [regions.bat, regions.metadata])
    if (r.offset < header.logOffset + header.logLength && header.logOffset < r.offset + r.length)
      throw VdiskError.corrupt(`${file}: region at ${r.offset}+${r.length} overlaps the log`);
  // The table, then each known item (at most 1 MiB each): never the whole region a header claims.
  const mt = await readMeta(METADATA_TABLE_SIZE, regions.metadata.offset);
  const fetched = new Map<string, Buffer>();
  for (const e of metadataEntries(file, mt, regions.metadata.length))
    if (e.known) fetched.set(`${e.offset}+${e.length}`, await readMeta(e.length, regions.metadata.offset + e.offset));
  const meta = parseMetadata(file, mt, regions.metadata.length, (o, l) => fetched.get(`${o}+${l}`)!);
  const geometry = bat.batGeometry(meta.virtualSize, meta.blockSize, meta.logicalSectorSize, meta.hasParent);
  const batBytes = geometry.entries * 8;
  if (batBytes > regions.bat.length)
    throw VdiskError.corrupt(
      `${file}: the BAT needs ${batBytes} bytes for ${meta.virtualSize} bytes of disk, its region holds ${regions.bat.length}`,
    );
  const table = await readMeta(Math.ceil(batBytes / bat.BAT_SECTOR) * bat.BAT_SECTOR, regions.bat.offset);
  const layout: VhdxLayout = {
    fileSize,
    creator: parseCreator(id),
    header,
    slot,
    regions,
    meta,
    geometry,
    bat: table,
    overlay,
    replayed,
  };
  if (!lenient) {
    const problems = batProblems(layout, 1);
    if (problems.length > 0) throw VdiskError.corrupt(`${file}: ${problems[0]}`);
  }
  return layout;
}

/**
 * What is wrong with the BAT (at most `max` findings): unknown states, blocks past the end of
 * the file or over the header section, log, region table, metadata or BAT, blocks over each other.
 */
export function batProblems(l: VhdxLayout, max = Infinity): string[] {
  const out: string[] = [];
  const g = l.geometry;
  const h = l.header;
  const fixed: Array<[number, number, string]> = [
    [0, bat.MiB, 'the header section'],
    [h.logOffset, h.logOffset + h.logLength, 'the log'],
    [l.regions.bat.offset, l.regions.bat.offset + l.regions.bat.length, 'the BAT'],
    [l.regions.metadata.offset, l.regions.metadata.offset + l.regions.metadata.length, 'the metadata region'],
  ];
  const used: Array<[number, number, number]> = [];
  for (let i = 0; i < g.entries && out.length < max; i++) {
    const isBitmap = (i + 1) % (g.chunkRatio + 1) === 0;
    const s = bat.entryState(l.bat, i);
    const what = isBitmap ? `sector bitmap entry ${i}` : `BAT entry ${i}`;
    if (isBitmap ? s !== 0 && s !== bat.SB_PRESENT : !bat.isPayloadState(s)) {
      out.push(`${what} has state ${s}, which [MS-VHDX] does not define`);
      continue;
    }
    if (!(isBitmap ? s === bat.SB_PRESENT : s === bat.FULLY_PRESENT || s === bat.PARTIALLY_PRESENT)) continue;
    const start = bat.entryOffsetMB(l.bat, i) * bat.MiB;
    const end = start + (isBitmap ? bat.MiB : g.blockSize);
    if (end > l.fileSize) {
      out.push(`${what} points at ${start}, past the end of the file (${l.fileSize} bytes)`);
      continue;
    }
    const hit = fixed.find(([a, b]) => start < b && a < end);
    if (hit) {
      out.push(`${what} points at ${start}, inside ${hit[2]}`);
      continue;
    }
    used.push([start, end, i]);
  }
  used.sort((a, b) => a[0] - b[0]);
  for (let k = 1; k < used.length && out.length < max; k++)
    if (used[k]![0] < used[k - 1]![1]) out.push(`BAT entries ${used[k - 1]![2]} and ${used[k]![2]} point at overlapping blocks`);
  return out;
}
