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
import {
  KIND_COMPRESSED,
  KIND_UNALLOCATED,
  L2Layout,
  l1Copied,
  l1Offset,
  l2Compressed,
  l2Copied,
  l2HostOffset,
  l2Kind,
} from './table-entry';

const log = createDebug('vdiskfs:qcow2');
const MAX_WALK_CLUSTERS = 16 * 1024 * 1024; // 1 TiB of 64 KiB clusters; 64 MiB per counter array
const MAX_SNAPSHOT_L1_BYTES = 256 << 20; // all snapshots' L1 tables together

export interface Walk {
  counts: Uint32Array; // expected refcount per host cluster
  messages: string[];
  corruptions: number;
  /** Active-layer COPIED flags to verify once counts are known; `at` = file offset of the entry. */
  copiedChecks: { host: number; copied: boolean; what: string; at: number }[];
  /** Active layer only, counted as qemu-img check does (its allocation / fragmentation line). */
  frag: { allocated: number; fragmented: number; compressed: number };
}

export async function walkReferences(
  file: HostFile,
  meta: ImageMeta,
  l1: Buffer,
  snaps: { snapshots: Snapshot[]; length: number },
): Promise<Walk> {
  const snapshots = snaps.snapshots;
  const h = meta.header;
  const cs = 2 ** h.clusterBits;
  const clusters = Math.ceil(meta.fileSize / cs);
  if (clusters > MAX_WALK_CLUSTERS) throw VdiskError.unsupported('qcow2 image too large for a refcount walk');
  const counts = new Uint32Array(clusters);
  const w: Walk = { counts, messages: [], corruptions: 0, copiedChecks: [], frag: { allocated: 0, fragmented: 0, compressed: 0 } };
  const extended = (h.incompatible & INCOMPAT_EXTL2) !== 0n;
  const layout: L2Layout = { clusterBits: h.clusterBits, extended, entrySize: extended ? 16 : 8 };
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
    for (let c = first; c <= last; c++) counts[c] = Math.min(counts[c]! + times, 0xffffffff);
  };
  inc(0, cs, 'header');
  const l2 = Buffer.alloc(cs); // one buffer for every L2 table of the walk

  // The active layer: every entry counted, COPIED flags and fragmentation noted.
  if (l1.length) inc(h.l1TableOffset, l1.length, 'active L1 table');
  for (let i = 0; i < l1.length / 8; i++) {
    const l2off = l1Offset(l1, i);
    if (l2off === 0) continue;
    if (l2off % cs !== 0) {
      bad(`active L2 table ${i} offset ${l2off} not cluster aligned`);
      continue;
    }
    inc(l2off, cs, 'active L2 table');
    w.copiedChecks.push({ host: l2off, copied: l1Copied(l1, i), what: `L1 entry ${i}`, at: h.l1TableOffset + i * 8 });
    if (l2off >= meta.fileSize) continue;
    await file.read(l2, l2off, 'check');
    let nextContiguous = 0; // per L2 table, as QEMU counts fragmentation
    for (let j = 0; j < cs / layout.entrySize; j++) {
      const kind = l2Kind(l2, j, layout);
      if (kind === KIND_COMPRESSED) {
        const c = l2Compressed(l2, j, layout);
        inc(c.host, c.size, 'compressed');
        // QEMU counts every compressed cluster as fragmented too.
        w.frag.allocated++;
        w.frag.compressed++;
        w.frag.fragmented++;
        continue;
      }
      if (kind === KIND_UNALLOCATED) continue;
      const host = l2HostOffset(l2, j, layout);
      if (host === 0) continue;
      w.frag.allocated++;
      if (nextContiguous && host !== nextContiguous) w.frag.fragmented++;
      nextContiguous = host + cs;
      if (host % cs !== 0) {
        bad(`active data cluster ${host} (L2 ${l2off} entry ${j}) not cluster aligned`);
        continue;
      }
      if (externalData) continue;
      inc(host, cs, 'active data cluster');
      w.copiedChecks.push({ host, copied: l2Copied(l2, j, layout), what: `L2 ${l2off} entry ${j}`, at: l2off + j * layout.entrySize });
    }
  }

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
    const l2Times = new Uint32Array(clusters); // references to each L2 table from snapshot L1 tables
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
        if (l2off < meta.fileSize) l2Times[l2off / cs] = Math.min(l2Times[l2off / cs]! + times, 0xffffffff);
      }
    }
    for (let t = 0; t < clusters; t++) {
      const times = l2Times[t]!;
      if (times === 0) continue;
      const l2off = t * cs;
      await file.read(l2, l2off, 'check');
      for (let j = 0; j < cs / layout.entrySize; j++) {
        const kind = l2Kind(l2, j, layout);
        if (kind === KIND_COMPRESSED) {
          const c = l2Compressed(l2, j, layout);
          inc(c.host, c.size, 'compressed', times);
          continue;
        }
        if (kind === KIND_UNALLOCATED) continue;
        const host = l2HostOffset(l2, j, layout);
        if (host === 0) continue;
        if (host % cs !== 0) {
          bad(`snapshot data cluster ${host} (L2 ${l2off} entry ${j}) not cluster aligned`, times);
          continue;
        }
        if (!externalData) inc(host, cs, 'snapshot data cluster', times);
      }
    }
  }
  return w;
}

/** Stored refcount of every cluster (0 where no block), up to `clusters`. */
export async function readStoredRefcounts(file: HostFile, meta: ImageMeta, clusters: number): Promise<Uint32Array> {
  const h = meta.header;
  const cs = 2 ** h.clusterBits;
  const perBlock = (cs * 8) >> h.refcountOrder;
  const table = Buffer.alloc(h.refcountTableClusters * cs);
  await file.read(table, h.refcountTableOffset, 'check');
  const out = new Uint32Array(Math.max(clusters, 0));
  const block = Buffer.alloc(cs);
  for (let b = 0; b < table.length / 8 && b * perBlock < clusters; b++) {
    const off = reftableEntry(table, b);
    if (off === 0 || off >= meta.fileSize) continue;
    await file.read(block, off, 'check');
    for (let i = 0; i < perBlock && b * perBlock + i < clusters; i++)
      out[b * perBlock + i] = Math.min(getRefcount(block, i, h.refcountOrder), 0xffffffff);
  }
  return out;
}

/**
 * Refcount table and blocks of the current structures, counted as references too (last, as
 * QEMU does). Returns one message per refcount block that something else also references.
 */
export async function countRefcountStructures(file: HostFile, meta: ImageMeta, counts: Uint32Array): Promise<string[]> {
  const h = meta.header;
  const cs = 2 ** h.clusterBits;
  const table = Buffer.alloc(h.refcountTableClusters * cs);
  await file.read(table, h.refcountTableOffset, 'check');
  const mark = (off: number, n: number): void => {
    for (let c = Math.floor(off / cs); c < Math.ceil((off + n) / cs) && c < counts.length; c++) counts[c]!++;
  };
  mark(h.refcountTableOffset, table.length);
  const shared: string[] = [];
  for (let b = 0; b < table.length / 8; b++) {
    const off = reftableEntry(table, b);
    if (!off) continue;
    mark(off, cs);
    const c = Math.floor(off / cs);
    if (c < counts.length && counts[c] !== 1) shared.push(`ERROR refcount block ${b} refcount=${counts[c]}`);
  }
  return shared;
}

/**
 * Writes a new refcount table and blocks after everything else, counting themselves, and points
 * the header at them. Old structures become unreferenced space.
 */
export async function writeFreshRefcounts(
  file: HostFile,
  meta: ImageMeta,
  counts: Uint32Array,
): Promise<{ offset: number; clusters: number }> {
  const h = meta.header;
  const cs = 2 ** h.clusterBits;
  const perBlock = (cs * 8) >> h.refcountOrder;
  let end = counts.length;
  while (end > 0 && counts[end - 1] === 0) end--;
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
  const all = new Uint32Array(blocks * perBlock);
  all.set(counts.subarray(0, Math.min(counts.length, all.length)));
  for (let c = start; c < total; c++) all[c] = 1;
  const max = maxRefcount(h.refcountOrder);
  const table = Buffer.alloc(tableClusters * cs);
  const blockBuf = Buffer.alloc(blocks * cs);
  for (let b = 0; b < blocks; b++) {
    setReftableEntry(table, b, (start + tableClusters + b) * cs);
    const blk = blockBuf.subarray(b * cs, (b + 1) * cs);
    for (let i = 0; i < perBlock; i++) {
      const v = all[b * perBlock + i]!;
      if (v) setRefcount(blk, i, h.refcountOrder, Math.min(v, max));
    }
  }
  await file.write(blockBuf, (start + tableClusters) * cs, 'refblock');
  await file.write(table, start * cs, 'reftable');
  await file.datasync('flush');
  const hdr = refcountTablePatch(start * cs, tableClusters);
  await file.write(hdr.bytes, hdr.at, 'header');
  await file.datasync('header');
  log('rebuilt refcounts: table at cluster %d (%d clusters), %d blocks', start, tableClusters, blocks);
  return { offset: start * cs, clusters: tableClusters };
}
