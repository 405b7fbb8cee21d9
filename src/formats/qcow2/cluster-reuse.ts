/**
 * Writes into guest clusters that already own a private host cluster the fast path cannot
 * overwrite whole: a standard zero cluster that kept its host cluster (rewritten in full, its
 * stale bytes replaced by zeros) and, with extended L2, a cluster whose touched subclusters are
 * not all allocated (COW fills the subcluster edges). Part of write-path.ts's plan step: the
 * data goes out unlocked, the L2 entry changes at commit, after the data.
 */
import type { HostFile } from '../../io/host-file';
import type { MapContext } from './mapping';
import type { CacheEntry, DataWrite, MetadataCache } from './metadata-cache';
import {
  KIND_NORMAL,
  KIND_ZERO,
  l1Copied,
  l2AllocBits,
  l2Copied,
  l2HostOffset,
  l2Kind,
  l2ZeroBits,
  setL2Extended,
  setL2Normal,
  subclusterMask,
} from './table-entry';

/** One write's plan: tables it pinned, data I/O to run unlocked, L2 changes to commit after. */
export interface Plan {
  pinned: CacheEntry[];
  io: (() => Promise<void>)[];
  commits: (() => void)[];
}

/** The pinned L2 table and entry index of a guest cluster. */
export type EntryOf = (c: number) => [CacheEntry, number];

/** What these writes need from the image (write-path.ts's LayerAccess has it all). */
export interface ReuseAccess {
  readonly ctx: MapContext;
  readonly cache: MetadataCache;
  readonly dataFile: HostFile;
  readonly counters: { dataWrites: number };
  readLayer(offset: number, into: Buffer): Promise<void>;
}

/** A data write that L2 entries will point at, known to the cache's write order; throws if it failed. */
export async function trackData(cache: MetadataCache, write: Promise<void>): Promise<DataWrite> {
  const d = cache.trackData(write);
  await write;
  return d;
}

/**
 * Host offset of a private (refcount 1) host cluster that a write may reuse: any normal
 * cluster, or a standard zero cluster that kept its host cluster. -1 otherwise.
 */
export function privateHost(a: ReuseAccess, c: number, entryOf: EntryOf): number {
  const [e, i] = entryOf(c);
  if (!e) return -1;
  const l = a.ctx.layout;
  const kind = l2Kind(e.buf, i, l);
  if ((kind !== KIND_NORMAL && kind !== KIND_ZERO) || !l2Copied(e.buf, i, l)) return -1;
  if (!l1Copied(a.ctx.l1, Math.floor(c / a.ctx.l2Entries))) return -1;
  const host = l2HostOffset(e.buf, i, l);
  return host === 0 ? -1 : host;
}

/** Standard zero cluster that kept its host cluster: the whole cluster is written in place. */
export function planZeroAllocated(a: ReuseAccess, plan: Plan, c: number, offset: number, buf: Buffer, entryOf: EntryOf): void {
  const cs = 2 ** a.ctx.clusterBits;
  const [e, i] = entryOf(c);
  const l = a.ctx.layout;
  const host = l2HostOffset(e.buf, i, l);
  const cStart = c * cs;
  const from = Math.max(offset, cStart);
  const to = Math.min(offset + buf.length, cStart + cs);
  // The host bytes are stale: zeros go out explicitly.
  const parts = [Buffer.alloc(from - cStart), buf.subarray(from - offset, to - offset), Buffer.alloc(cStart + cs - to)];
  let written: DataWrite | undefined;
  plan.io.push(async () => {
    written = await trackData(a.cache, a.dataFile.write(parts, host, 'data'));
  });
  a.counters.dataWrites++;
  plan.commits.push(() => {
    setL2Normal(e.buf, i, l, host, true);
    e.dirty = true;
    a.cache.pointsAtData(e, written!);
  });
}

/** Extended L2: writes into a private host cluster, allocating the touched subclusters. */
export function planSubclusters(a: ReuseAccess, plan: Plan, c: number, offset: number, buf: Buffer, entryOf: EntryOf): void {
  const cs = 2 ** a.ctx.clusterBits;
  const l = a.ctx.layout;
  const sc = cs / 32;
  const [e, i] = entryOf(c);
  const host = l2HostOffset(e.buf, i, l);
  const alloc = l2AllocBits(e.buf, i, l);
  const cStart = c * cs;
  const from = Math.max(offset, cStart);
  const to = Math.min(offset + buf.length, cStart + cs);
  const lo = Math.floor((from - cStart) / sc);
  const hi = Math.ceil((to - cStart) / sc);
  // The host bytes of an unallocated subcluster may be stale: COW writes them explicitly.
  const ws = !(alloc & (2 ** lo)) && from > cStart + lo * sc ? cStart + lo * sc : from;
  const we = !(alloc & (2 ** (hi - 1))) && to < cStart + hi * sc ? cStart + hi * sc : to;
  const payload = buf.subarray(from - offset, to - offset);
  let written: DataWrite | undefined;
  plan.io.push(async () => {
    const parts: Buffer[] = [];
    if (ws < from) {
      const head = Buffer.alloc(from - ws);
      await a.readLayer(ws, head);
      parts.push(head);
    }
    parts.push(payload);
    if (we > to) {
      const tail = Buffer.alloc(we - to);
      await a.readLayer(to, tail);
      parts.push(tail);
    }
    written = await trackData(a.cache, a.dataFile.write(parts, host + (ws - cStart), 'data'));
  });
  a.counters.dataWrites++;
  plan.commits.push(() => {
    const mask = subclusterMask(lo, hi);
    setL2Extended(e.buf, i, l, host, true, (l2AllocBits(e.buf, i, l) | mask) >>> 0, l2ZeroBits(e.buf, i, l) & ~mask);
    e.dirty = true;
    a.cache.pointsAtData(e, written!);
  });
}
