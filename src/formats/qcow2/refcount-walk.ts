/**
 * Refcounts from first principles: walk every structure that references host clusters (header,
 * L1/L2 tables of the active layer and of every snapshot, data and compressed clusters, snapshot
 * table) and count. Used by check (compare with what is stored), repair and the open of a dirty
 * image (both write a fresh refcount table and blocks at the end of the file, like
 * `qemu-img check -r all`).
 */
import createDebug from 'debug';
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { INCOMPAT_DATA_FILE, INCOMPAT_EXTL2, refcountTablePatch } from './header';
import type { ImageMeta } from './meta';
import { getRefcount, maxRefcount, reftableEntry, setRefcount, setReftableEntry } from './refcount-block';
import { Snapshot, validateSnapshot } from './snapshot-table';
import { ClusterCounts } from './cluster-counts';
import { COMPRESSED_HI, COPIED_HI, hostOf, L2Layout, l1Copied, l1Offset, l2Compressed, tableWords } from './table-entry';

const log = createDebug('vdiskfs:qcow2');
/** 16 TiB of file in 64 KiB clusters: 512 MiB per count array (check holds two). */
const MAX_WALK_CLUSTERS = 256 * 1024 * 1024;
const MAX_SNAPSHOT_L1_BYTES = 256 << 20; // all snapshots' L1 tables together
/** Tables that lie side by side (a preallocated image's do) are read together, this much at a time. */
const RUN_BYTES = 4 << 20;

export interface Walk {
  counts: ClusterCounts; // expected refcount per host cluster
  messages: string[];
  corruptions: number;
  /** Active layer only, counted as qemu-img check does (its allocation / fragmentation line). */
  frag: { allocated: number; fragmented: number; compressed: number };
}

function layoutOf(meta: ImageMeta): L2Layout {
  const h = meta.header;
  const extended = (h.incompatible & INCOMPAT_EXTL2) !== 0n;
  return { clusterBits: h.clusterBits, extended, entrySize: extended ? 16 : 8 };
}

/**
 * Reads every table in `tables` (cluster-aligned offsets inside the file) once, neighbours in one
 * read of up to RUN_BYTES, and hands each to `fn` in offset order.
 */
async function forEachTable(
  file: HostFile,
  tables: Iterable<number>,
  cs: number,
  fn: (offset: number, table: Buffer) => void,
  progress?: (fraction: number) => void,
): Promise<void> {
  const sorted = [...new Set(tables)].sort((a, b) => a - b);
  const run = Buffer.alloc(Math.max(cs, Math.floor(RUN_BYTES / cs) * cs));
  for (let i = 0; i < sorted.length;) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + cs && (j + 2 - i) * cs <= run.length) j++;
    const first = sorted[i]!;
    const bytes = run.subarray(0, (j - i + 1) * cs);
    await file.read(bytes, first, 'check');
    for (let k = i; k <= j; k++) fn(sorted[k]!, bytes.subarray((k - i) * cs, (k - i + 1) * cs));
    i = j + 1;
    progress?.(i / sorted.length);
  }
}

/** The active L1 table's L2 tables: offset → how many L1 entries name it (bad entries reported). */
function activeL2Tables(l1: Buffer, cs: number, fileSize: number, bad?: (msg: string) => void): Map<number, number> {
  const out = new Map<number, number>();
  for (let i = 0; i < l1.length / 8; i++) {
    const l2off = l1Offset(l1, i);
    if (l2off === 0) continue;
    if (l2off % cs !== 0) {
      bad?.(`active L2 table ${i} offset ${l2off} not cluster aligned`);
      continue;
    }
    if (l2off >= fileSize) continue; // counted (and reported) as a reference past the end
    out.set(l2off, (out.get(l2off) ?? 0) + 1);
  }
  return out;
}

export async function walkReferences(
  file: HostFile,
  meta: ImageMeta,
  l1: Buffer,
  snaps: { snapshots: Snapshot[]; length: number },
  progress?: (fraction: number) => void,
): Promise<Walk> {
  const snapshots = snaps.snapshots;
  const h = meta.header;
  const cs = 2 ** h.clusterBits;
  const clusters = Math.ceil(meta.fileSize / cs);
  if (clusters > MAX_WALK_CLUSTERS)
    throw VdiskError.unsupported(`qcow2 file of ${clusters} clusters is larger than a refcount walk holds (${MAX_WALK_CLUSTERS})`);
  const counts = new ClusterCounts(clusters);
  const w: Walk = { counts, messages: [], corruptions: 0, frag: { allocated: 0, fragmented: 0, compressed: 0 } };
  const layout = layoutOf(meta);
  const externalData = (h.incompatible & INCOMPAT_DATA_FILE) !== 0n;
  // `times`: how often the structure is referenced (snapshots share tables; see below).
  const bad = (msg: string, times = 1): void => {
    w.corruptions += times;
    if (w.messages.length < 100) w.messages.push(msg);
  };
  const inc = (host: number, length: number, what: string, times = 1): void => {
    if (host % 512 !== 0 && what !== 'compressed') return bad(`${what} at ${host} not aligned`, times);
    const first = Math.floor(host / cs);
    const last = Math.floor((host + length - 1) / cs);
    if (last >= clusters) return bad(`${what} at ${host} beyond the end of the image`, times);
    for (let c = first; c <= last; c++) counts.add(c, times);
  };
  /** Every entry of one L2 table, counted `times` (`active`: the allocation and fragmentation line too). */
  const scratch = Buffer.alloc(cs); // a table's words in host order (tableWords), reused
  const stride = layout.entrySize / 4;
  const countL2 = (l2off: number, l2: Buffer, times: number, active: boolean): void => {
    const who = active ? 'active' : 'snapshot';
    const n = cs / layout.entrySize;
    const words = tableWords(l2, scratch);
    let nextContiguous = 0; // per L2 table, as QEMU counts fragmentation
    for (let j = 0; j < n; j++) {
      const hi = words[j * stride]!;
      const lo = words[j * stride + 1]!;
      if (hi & COMPRESSED_HI) {
        const c = l2Compressed(l2, j, layout);
        inc(c.host, c.size, 'compressed', times);
        if (active) {
          // QEMU counts every compressed cluster as fragmented too.
          w.frag.allocated += times;
          w.frag.compressed += times;
          w.frag.fragmented += times;
        }
        continue;
      }
      const host = hostOf(hi, lo);
      if (host === 0) continue; // unallocated (or a zero cluster without a host cluster)
      if (active) {
        w.frag.allocated += times;
        if (nextContiguous && host !== nextContiguous) w.frag.fragmented += times;
        nextContiguous = host + cs;
      }
      if (host % cs !== 0) {
        bad(`${who} data cluster ${host} (L2 ${l2off} entry ${j}) not cluster aligned`, times);
        continue;
      }
      if (externalData) continue;
      // The hot path (every data cluster of a preallocated image): one add, no range loop.
      const c = host / cs;
      if (c >= clusters) bad(`${who} data cluster at ${host} beyond the end of the image`, times);
      else counts.add(c, times);
    }
  };
  inc(0, cs, 'header');

  // The active layer: every entry counted, fragmentation noted (COPIED flags: copiedProblems).
  if (l1.length) inc(h.l1TableOffset, l1.length, 'active L1 table');
  for (let i = 0; i < l1.length / 8; i++) {
    const l2off = l1Offset(l1, i);
    if (l2off !== 0 && l2off % cs === 0) inc(l2off, cs, 'active L2 table');
  }
  const active = activeL2Tables(l1, cs, meta.fileSize, (m) => bad(m));
  // Progress: the active layer's tables are most of the work (snapshots share theirs).
  await forEachTable(file, active.keys(), cs, (off, t) => countL2(off, t, active.get(off)!, true), progress);

  // Snapshots share L1 and L2 tables (those of an unchanged disk are all the same): each distinct
  // table is read once and what it references counted as often as it is referenced. So 65,536
  // snapshots, or a hostile table pointing them all at one huge L1, cost one read per table.
  if (h.nbSnapshots) {
    inc(h.snapshotsOffset, Math.max(snaps.length, 1), 'snapshot table');
    const l1Tables = new Map<string, { s: Snapshot; times: number }>();
    for (const s of snapshots) {
      try {
        validateSnapshot(s, cs);
      } catch (e) {
        bad((e as Error).message);
        continue;
      }
      const key = `${s.l1TableOffset}:${s.l1Size}`;
      const seen = l1Tables.get(key);
      if (seen) seen.times++;
      else l1Tables.set(key, { s, times: 1 });
    }
    let total = 0;
    for (const { s } of l1Tables.values()) total += s.l1Size * 8;
    if (total > MAX_SNAPSHOT_L1_BYTES) throw VdiskError.corrupt(`qcow2 snapshot L1 tables total ${total} bytes: refusing to walk`);
    const l2Times = new Map<number, number>(); // references to each L2 table from snapshot L1 tables
    for (const { s, times } of l1Tables.values()) {
      if (s.l1Size === 0) continue;
      const name = `snapshot '${s.name}'`;
      inc(s.l1TableOffset, s.l1Size * 8, `${name} L1 table`, times);
      const t = Buffer.alloc(s.l1Size * 8);
      await file.read(t, s.l1TableOffset, 'check');
      for (let i = 0; i < s.l1Size; i++) {
        const l2off = l1Offset(t, i);
        if (l2off === 0) continue;
        if (l2off % cs !== 0) {
          bad(`${name} L2 table ${i} offset ${l2off} not cluster aligned`, times);
          continue;
        }
        inc(l2off, cs, `${name} L2 table`, times);
        if (l2off < meta.fileSize) l2Times.set(l2off, Math.min((l2Times.get(l2off) ?? 0) + times, 0xffffffff));
      }
    }
    await forEachTable(file, l2Times.keys(), cs, (off, t) => countL2(off, t, l2Times.get(off)!, false));
  }
  return w;
}

/** One active-layer entry whose COPIED flag disagrees with a refcount (`at`: file offset of the entry). */
export interface CopiedProblem {
  at: number;
  copied: boolean;
  what: string;
}

/**
 * A second pass over the active layer, once refcounts are known: every L1 and L2 entry whose
 * COPIED flag does not say "refcount is exactly 1" by `refcount` (stored ones for check, counted
 * ones for repair). Reported through `report` (nothing is collected per entry).
 */
export async function copiedProblems(
  file: HostFile,
  meta: ImageMeta,
  l1: Buffer,
  refcount: (cluster: number) => number,
  report: (p: CopiedProblem, cluster: number) => void,
  progress?: (fraction: number) => void,
): Promise<void> {
  const h = meta.header;
  const cs = 2 ** h.clusterBits;
  const layout = layoutOf(meta);
  for (let i = 0; i < l1.length / 8; i++) {
    const l2off = l1Offset(l1, i);
    if (l2off === 0 || l2off % cs !== 0) continue;
    const copied = l1Copied(l1, i);
    if ((refcount(l2off / cs) === 1) !== copied) report({ at: h.l1TableOffset + i * 8, copied, what: `L1 entry ${i}` }, l2off / cs);
  }
  if ((h.incompatible & INCOMPAT_DATA_FILE) !== 0n) return; // data clusters live elsewhere: no flags to check
  const n = cs / layout.entrySize;
  const stride = layout.entrySize / 4;
  const scratch = Buffer.alloc(cs);
  await forEachTable(
    file,
    activeL2Tables(l1, cs, meta.fileSize).keys(),
    cs,
    (l2off, l2) => {
      const words = tableWords(l2, scratch);
      for (let j = 0; j < n; j++) {
        const hi = words[j * stride]!;
        if (hi & COMPRESSED_HI) continue;
        const host = hostOf(hi, words[j * stride + 1]!);
        if (host === 0 || host % cs !== 0) continue;
        const copied = (hi & COPIED_HI) !== 0;
        if ((refcount(host / cs) === 1) !== copied)
          report({ at: l2off + j * layout.entrySize, copied, what: `L2 ${l2off} entry ${j}` }, host / cs);
      }
    },
    progress,
  );
}

/** Stored refcount of every cluster (0 where no block), up to `clusters`; refcount blocks read in runs. */
export async function readStoredRefcounts(file: HostFile, meta: ImageMeta, clusters: number): Promise<ClusterCounts> {
  const h = meta.header;
  const cs = 2 ** h.clusterBits;
  const perBlock = (cs * 8) >> h.refcountOrder;
  const table = Buffer.alloc(h.refcountTableClusters * cs);
  await file.read(table, h.refcountTableOffset, 'check');
  const out = new ClusterCounts(Math.max(clusters, 0));
  const blocksAt = new Map<number, number[]>(); // block offset → the table indexes naming it
  for (let b = 0; b < table.length / 8 && b * perBlock < clusters; b++) {
    const off = reftableEntry(table, b);
    if (off === 0 || off >= meta.fileSize || off % cs !== 0) continue;
    const list = blocksAt.get(off);
    if (list) list.push(b);
    else blocksAt.set(off, [b]);
  }
  await forEachTable(file, blocksAt.keys(), cs, (off, block) => {
    for (const b of blocksAt.get(off)!) {
      const n = Math.min(perBlock, clusters - b * perBlock);
      const base = b * perBlock;
      if (h.refcountOrder === 4) for (let i = 0; i < n; i++) out.set(base + i, block.readUInt16BE(i * 2));
      else for (let i = 0; i < n; i++) out.set(base + i, Math.min(getRefcount(block, i, h.refcountOrder), 0xffffffff));
    }
  });
  return out;
}

/**
 * Adds the refcount table and blocks of the current structures to `counts` (last, as QEMU
 * does). Returns one message per refcount block that something else also references, and the
 * clusters added (a repair takes them out again: the old structures become free space).
 */
export async function countRefcountStructures(
  file: HostFile,
  meta: ImageMeta,
  counts: ClusterCounts,
): Promise<{ shared: string[]; added: number[] }> {
  const h = meta.header;
  const cs = 2 ** h.clusterBits;
  const table = Buffer.alloc(h.refcountTableClusters * cs);
  await file.read(table, h.refcountTableOffset, 'check');
  const added: number[] = [];
  const mark = (off: number, n: number): void => {
    for (let c = Math.floor(off / cs); c < Math.ceil((off + n) / cs) && c < counts.length; c++) {
      counts.add(c, 1);
      added.push(c);
    }
  };
  mark(h.refcountTableOffset, table.length);
  const blocks: Array<[number, number]> = [];
  for (let b = 0; b < table.length / 8; b++) {
    const off = reftableEntry(table, b);
    if (!off) continue;
    mark(off, cs);
    blocks.push([b, Math.floor(off / cs)]);
  }
  const shared: string[] = [];
  for (const [b, c] of blocks)
    if (c < counts.length && counts.get(c) !== 1) shared.push(`ERROR refcount block ${b} refcount=${counts.get(c)}`);
  return { shared, added };
}

/** Refcount blocks written per host write while rebuilding (bounded memory). */
const FRESH_BLOCKS_PER_WRITE = 64;

/**
 * Writes a new refcount table and blocks after everything else, counting themselves, and points
 * the header at them. Old structures become unreferenced space. Blocks go out in batches, so a
 * rebuild of a multi-TiB image holds the counts and one batch, not every block.
 */
export async function writeFreshRefcounts(
  file: HostFile,
  meta: ImageMeta,
  counts: ClusterCounts,
): Promise<{ offset: number; clusters: number }> {
  const h = meta.header;
  const cs = 2 ** h.clusterBits;
  const perBlock = (cs * 8) >> h.refcountOrder;
  const end = counts.end();
  const start = Math.max(end, Math.ceil(meta.fileSize / cs));
  let blocks = 1;
  let tableClusters = 1;
  for (;;) {
    const total = start + tableClusters + blocks;
    const needBlocks = Math.ceil(total / perBlock);
    const needTable = Math.ceil((needBlocks * 8) / cs);
    if (needBlocks <= blocks && needTable <= tableClusters) break;
    blocks = Math.max(blocks, needBlocks);
    tableClusters = Math.max(tableClusters, needTable);
  }
  const total = start + tableClusters + blocks;
  const max = maxRefcount(h.refcountOrder);
  const valueOf = (c: number): number => (c >= start && c < total ? 1 : c < counts.length ? counts.get(c) : 0);
  const table = Buffer.alloc(tableClusters * cs);
  const batch = Buffer.alloc(Math.min(blocks, FRESH_BLOCKS_PER_WRITE) * cs);
  for (let b0 = 0; b0 < blocks; b0 += FRESH_BLOCKS_PER_WRITE) {
    const n = Math.min(FRESH_BLOCKS_PER_WRITE, blocks - b0);
    const buf = batch.subarray(0, n * cs);
    buf.fill(0);
    for (let b = b0; b < b0 + n; b++) {
      setReftableEntry(table, b, (start + tableClusters + b) * cs);
      const blk = buf.subarray((b - b0) * cs, (b - b0 + 1) * cs);
      for (let i = 0; i < perBlock; i++) {
        const v = valueOf(b * perBlock + i);
        if (v) setRefcount(blk, i, h.refcountOrder, Math.min(v, max));
      }
    }
    await file.write(buf, (start + tableClusters + b0) * cs, 'refblock');
  }
  await file.write(table, start * cs, 'reftable');
  await file.datasync('flush');
  const hdr = refcountTablePatch(start * cs, tableClusters);
  await file.write(hdr.bytes, hdr.at, 'header');
  await file.datasync('header');
  log('rebuilt refcounts: table at cluster %d (%d clusters), %d blocks', start, tableClusters, blocks);
  return { offset: start * cs, clusters: tableClusters };
}
