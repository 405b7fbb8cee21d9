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
import { COMPRESSED_HI, COPIED_HI, hostOf, L2Layout, l1Copied, l1Offset, l2Compressed, tableWords, withCopied } from './table-entry';

const log = createDebug('vdiskfs:qcow2');
/**
 * The memory budget of a walk: host clusters counted per pass (2 bytes each; check holds the
 * stored refcounts of the same window too). 64 Mi clusters is 4 TiB of file at 64 KiB clusters
 * in one pass, 128 MiB per array; a bigger file is walked in windows of this many clusters, one
 * pass over the tables each (VDISKFS_WALK_WINDOW_CLUSTERS sets it, for tests).
 */
const walkWindowClusters = (): number => Number(process.env.VDISKFS_WALK_WINDOW_CLUSTERS ?? 64 * 1024 * 1024);
const MAX_SNAPSHOT_L1_BYTES = 256 << 20; // all snapshots' L1 tables together
/** Tables that lie side by side (a preallocated image's do) are read together, this much at a time. */
const RUN_BYTES = 4 << 20;

/** Host clusters [first, first+count) counted in one pass over the tables. */
export interface ClusterWindow {
  first: number;
  count: number;
  /** Which pass this is, and of how many (the status line says it when there are several). */
  pass: number;
  passes: number;
}

/**
 * The windows a walk of this image takes: one for any file up to the budget, else windows of
 * whole refcount blocks (a fresh block is then written from one window's counts).
 */
export function walkWindows(meta: ImageMeta): ClusterWindow[] {
  const h = meta.header;
  const clusters = Math.ceil(meta.fileSize / 2 ** h.clusterBits);
  const perBlock = (2 ** h.clusterBits * 8) >> h.refcountOrder;
  const size = Math.max(perBlock, Math.floor(walkWindowClusters() / perBlock) * perBlock);
  const passes = Math.max(1, Math.ceil(clusters / size));
  const out: ClusterWindow[] = [];
  for (let i = 0; i < passes; i++)
    out.push({ first: i * size, count: Math.max(0, Math.min(size, clusters - i * size)), pass: i + 1, passes });
  return out;
}

export interface Walk {
  counts: ClusterCounts; // expected refcount per host cluster of the window (index - window.first)
  messages: string[];
  corruptions: number;
  /**
   * References to clusters past the end of the file, counted in every pass: a rebuild would put
   * its new structures right there, under them (see rebuildRefcounts).
   */
  beyondEnd: number;
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
  window: ClusterWindow = walkWindows(meta)[0]!,
): Promise<Walk> {
  const snapshots = snaps.snapshots;
  const h = meta.header;
  const cs = 2 ** h.clusterBits;
  const clusters = Math.ceil(meta.fileSize / cs);
  // Counted only inside the window; problems and the allocation line only in the first pass,
  // so a walk in several passes reports each once.
  const w0 = window.first;
  const w1 = window.first + window.count;
  const reporting = window.pass === 1;
  const counts = new ClusterCounts(window.count);
  const w: Walk = { counts, messages: [], corruptions: 0, beyondEnd: 0, frag: { allocated: 0, fragmented: 0, compressed: 0 } };
  const layout = layoutOf(meta);
  const externalData = (h.incompatible & INCOMPAT_DATA_FILE) !== 0n;
  // `times`: how often the structure is referenced (snapshots share tables; see below).
  const bad = (msg: string, times = 1): void => {
    if (!reporting) return;
    w.corruptions += times;
    if (w.messages.length < 100) w.messages.push(msg);
  };
  const inc = (host: number, length: number, what: string, times = 1): void => {
    if (host % 512 !== 0 && what !== 'compressed') return bad(`${what} at ${host} not aligned`, times);
    const first = Math.floor(host / cs);
    const last = Math.floor((host + length - 1) / cs);
    if (last >= clusters) {
      w.beyondEnd += times;
      return bad(`${what} at ${host} beyond the end of the image`, times);
    }
    for (let c = Math.max(first, w0); c <= last && c < w1; c++) counts.add(c - w0, times);
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
        if (active && reporting) {
          // QEMU counts every compressed cluster as fragmented too.
          w.frag.allocated += times;
          w.frag.compressed += times;
          w.frag.fragmented += times;
        }
        continue;
      }
      const host = hostOf(hi, lo);
      if (host === 0) continue; // unallocated (or a zero cluster without a host cluster)
      if (active && reporting) {
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
      if (c >= clusters) {
        w.beyondEnd += times;
        bad(`${who} data cluster at ${host} beyond the end of the image`, times);
      } else if (c >= w0 && c < w1) counts.add(c - w0, times);
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
  refcount: (cluster: number) => number | undefined,
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
    const r = refcount(l2off / cs);
    if (r !== undefined && (r === 1) !== copied) report({ at: h.l1TableOffset + i * 8, copied, what: `L1 entry ${i}` }, l2off / cs);
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
        const r = refcount(host / cs);
        if (r !== undefined && (r === 1) !== copied)
          report({ at: l2off + j * layout.entrySize, copied, what: `L2 ${l2off} entry ${j}` }, host / cs);
      }
    },
    progress,
  );
}

/** Stored refcounts of the window's clusters (0 where no block); refcount blocks read in runs. */
export async function readStoredRefcounts(file: HostFile, meta: ImageMeta, window: ClusterWindow): Promise<ClusterCounts> {
  const h = meta.header;
  const cs = 2 ** h.clusterBits;
  const perBlock = (cs * 8) >> h.refcountOrder;
  const table = Buffer.alloc(h.refcountTableClusters * cs);
  await file.read(table, h.refcountTableOffset, 'check');
  const w0 = window.first;
  const w1 = window.first + window.count;
  const out = new ClusterCounts(window.count);
  const blocksAt = new Map<number, number[]>(); // block offset → the table indexes naming it
  for (let b = Math.floor(w0 / perBlock); b < table.length / 8 && b * perBlock < w1; b++) {
    const off = reftableEntry(table, b);
    if (off === 0 || off >= meta.fileSize || off % cs !== 0) continue;
    const list = blocksAt.get(off);
    if (list) list.push(b);
    else blocksAt.set(off, [b]);
  }
  await forEachTable(file, blocksAt.keys(), cs, (off, block) => {
    for (const b of blocksAt.get(off)!) {
      const from = Math.max(b * perBlock, w0);
      const to = Math.min((b + 1) * perBlock, w1);
      const base = b * perBlock;
      if (h.refcountOrder === 4) for (let c = from; c < to; c++) out.set(c - w0, block.readUInt16BE((c - base) * 2));
      else for (let c = from; c < to; c++) out.set(c - w0, Math.min(getRefcount(block, c - base, h.refcountOrder), 0xffffffff));
    }
  });
  return out;
}

/**
 * Adds the refcount table and blocks of the current structures to the window's `counts` (last,
 * as QEMU does). Returns one message per refcount block in the window that something else also
 * references.
 */
export async function countRefcountStructures(
  file: HostFile,
  meta: ImageMeta,
  counts: ClusterCounts,
  window: ClusterWindow,
): Promise<{ shared: string[] }> {
  const h = meta.header;
  const cs = 2 ** h.clusterBits;
  const table = Buffer.alloc(h.refcountTableClusters * cs);
  await file.read(table, h.refcountTableOffset, 'check');
  const w0 = window.first;
  const w1 = window.first + window.count;
  const mark = (off: number, n: number): void => {
    for (let c = Math.max(Math.floor(off / cs), w0); c < Math.ceil((off + n) / cs) && c < w1; c++) counts.add(c - w0, 1);
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
    if (c >= w0 && c < w1 && counts.get(c - w0) !== 1) shared.push(`ERROR refcount block ${b} refcount=${counts.get(c - w0)}`);
  return { shared };
}

/** Refcount blocks written per host write while rebuilding (bounded memory). */
const FRESH_BLOCKS_PER_WRITE = 64;

/**
 * New refcount structures written after everything else, counting themselves, and the header
 * pointed at them at the end; until then the old ones stay in force, so a rebuild cut short
 * leaves the image as it was (with some unreferenced space past its end). Blocks are written
 * window by window from each pass's counts, in batches, so a rebuild of any size holds one
 * window's counts and one batch.
 */
class FreshRefcounts {
  private readonly cs: number;
  private readonly perBlock: number;
  /** First cluster of the new table (the file's end: nothing counted lies past it), its clusters, blocks. */
  readonly start: number;
  private readonly tableClusters: number;
  private readonly blocks: number;
  private readonly table: Buffer;
  private readonly batch: Buffer;
  private written = 0; // blocks written so far, in order

  constructor(
    private readonly file: HostFile,
    private readonly meta: ImageMeta,
  ) {
    const h = meta.header;
    this.cs = 2 ** h.clusterBits;
    this.perBlock = (this.cs * 8) >> h.refcountOrder;
    this.start = Math.ceil(meta.fileSize / this.cs);
    let blocks = 1;
    let tableClusters = 1;
    for (;;) {
      const total = this.start + tableClusters + blocks;
      const needBlocks = Math.ceil(total / this.perBlock);
      const needTable = Math.ceil((needBlocks * 8) / this.cs);
      if (needBlocks <= blocks && needTable <= tableClusters) break;
      blocks = Math.max(blocks, needBlocks);
      tableClusters = Math.max(tableClusters, needTable);
    }
    this.blocks = blocks;
    this.tableClusters = tableClusters;
    this.table = Buffer.alloc(tableClusters * this.cs);
    this.batch = Buffer.alloc(Math.min(blocks, FRESH_BLOCKS_PER_WRITE) * this.cs);
  }

  /** The blocks that cover the window (windows come in order and cover whole blocks). */
  async writeWindow(counts: ClusterCounts, window: ClusterWindow): Promise<void> {
    const upTo = Math.min(this.blocks, Math.ceil((window.first + window.count) / this.perBlock));
    await this.writeBlocks(upTo, (c) => (c >= window.first && c < window.first + counts.length ? counts.get(c - window.first) : 0));
  }

  /** The blocks past every window (they count only the new structures), the table, the header. */
  async finish(): Promise<{ offset: number; clusters: number }> {
    await this.writeBlocks(this.blocks, () => 0);
    const { cs, start, tableClusters } = this;
    await this.file.write(this.table, start * cs, 'reftable');
    await this.file.datasync('flush');
    const hdr = refcountTablePatch(start * cs, tableClusters);
    await this.file.write(hdr.bytes, hdr.at, 'header');
    await this.file.datasync('header');
    log('rebuilt refcounts: table at cluster %d (%d clusters), %d blocks', start, tableClusters, this.blocks);
    return { offset: start * cs, clusters: tableClusters };
  }

  private async writeBlocks(upTo: number, counted: (cluster: number) => number): Promise<void> {
    const { cs, perBlock, start } = this;
    const order = this.meta.header.refcountOrder;
    const max = maxRefcount(order);
    const end = start + this.tableClusters + this.blocks;
    const valueOf = (c: number): number => (c >= start && c < end ? 1 : counted(c));
    while (this.written < upTo) {
      const b0 = this.written;
      const n = Math.min(FRESH_BLOCKS_PER_WRITE, upTo - b0);
      const buf = this.batch.subarray(0, n * cs);
      buf.fill(0);
      for (let b = b0; b < b0 + n; b++) {
        setReftableEntry(this.table, b, (start + this.tableClusters + b) * cs);
        const blk = buf.subarray((b - b0) * cs, (b - b0 + 1) * cs);
        for (let i = 0; i < perBlock; i++) {
          const v = valueOf(b * perBlock + i);
          if (v) setRefcount(blk, i, order, Math.min(v, max));
        }
      }
      await this.file.write(buf, (start + this.tableClusters + b0) * cs, 'refblock');
      this.written += n;
    }
  }
}

/** A pass-aware progress: `fraction` of pass `w` of its passes, as a fraction of the whole. */
export function passProgress(
  progress: ((fraction: number, detail?: string) => void) | undefined,
  w: ClusterWindow,
  from = 0,
  share = 1,
): ((fraction: number) => void) | undefined {
  if (!progress) return undefined;
  const detail = w.passes > 1 ? `pass ${w.pass} of ${w.passes}: the counts of a file this big exceed the memory budget` : undefined;
  return (f) => progress((w.pass - 1 + from + f * share) / w.passes, detail);
}

/**
 * `qemu-img check -r all`'s rebuild, and the repair at open of a dirty (lazy refcounts) image:
 * counts every reference from first principles, window by window, and writes fresh refcount
 * structures from the counts (the old ones become unreferenced space). With `fixCopied`, the
 * active layer's COPIED flags are then made to say "refcount is exactly 1" again.
 */
export async function rebuildRefcounts(
  file: HostFile,
  meta: ImageMeta,
  l1: Buffer,
  snaps: { snapshots: Snapshot[]; length: number },
  opts: { fixCopied: boolean; progress?: (fraction: number, detail?: string) => void },
): Promise<{ offset: number; clusters: number }> {
  const fresh = new FreshRefcounts(file, meta);
  const fixes: CopiedProblem[] = [];
  for (const w of walkWindows(meta)) {
    const walk = await walkReferences(file, meta, l1, snaps, passProgress(opts.progress, w, 0, 0.8), w);
    // Checked in the first window, before anything is written: the new structures go right
    // after the end of the file, where such a reference points (guest data and a refcount
    // table in one cluster, destroyed by the next write).
    if (walk.beyondEnd > 0) throw pastEndError(file.path, walk.beyondEnd);
    await fresh.writeWindow(walk.counts, w);
    if (opts.fixCopied) {
      const inWindow = (c: number) => (c >= w.first && c < w.first + w.count ? walk.counts.get(c - w.first) : undefined);
      await copiedProblems(file, meta, l1, inWindow, (p) => fixes.push(p), passProgress(opts.progress, w, 0.8, 0.2));
    }
  }
  const out = await fresh.finish();
  const word = Buffer.alloc(4);
  for (const x of fixes) {
    await file.read(word, x.at, 'check');
    word.writeUInt32BE(withCopied(word.readUInt32BE(0), !x.copied));
    await file.write(word, x.at, x.what.startsWith('L1') ? 'l1' : 'l2');
  }
  // Durable before the caller's header says the image is consistent (QEMU flushes before
  // marking clean): a crash between must not leave a clean header over a wrong COPIED flag.
  if (fixes.length) await file.datasync('l2');
  return out;
}

/** The refusal of a rebuild over references past the end of the file (the image is left as it was). */
export function pastEndError(path: string, references: number): VdiskError {
  return VdiskError.corrupt(
    `${path}: ${references} reference(s) point past the end of the file; refcounts not rebuilt (new tables would go under them), the image is left as it was`,
  );
}
