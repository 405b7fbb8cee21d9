/**
 * qcow2 discard (QEMU's discard=unmap): clusters the range covers whole lose their host cluster
 * and become unallocated, or zero clusters when a backing file would otherwise show through;
 * partial clusters are zeroed (with extended L2, whole subclusters by their bitmap). Dropped
 * references are queued as frees, which the refcount side applies only after the L2 change is
 * durable (metadata-cache.ts rule 4); a cluster whose refcount reaches 0 is punched and reused
 * (qcow2-image.ts recycle). A cluster a snapshot also references (refcount > 1) only loses this
 * reference, so it is never freed while another holds it.
 */
import type { Extent } from '../types';
import {
  KIND_COMPRESSED,
  KIND_NORMAL,
  KIND_UNALLOCATED,
  KIND_ZERO,
  l2AllocBits,
  l2Copied,
  l2HostOffset,
  l2Kind,
  l2ZeroBits,
  setL2Extended,
  setL2Zero,
  subclusterMask,
} from './table-entry';
import type { L2Access, WritePath } from './write-path';

export interface DiscardAccess extends L2Access {
  readonly writer: WritePath;
  writeZeroes(offset: number, length: number): Promise<void>;
  map(offset: number, length: number): Promise<Extent[]>;
}

export async function discardRange(a: DiscardAccess, offset: number, length: number): Promise<void> {
  const cs = 2 ** a.ctx.clusterBits;
  const end = offset + length;
  // v2 cannot hide a backing file without data; an external data file keeps guest == host layout.
  if ((!a.zeroClusters && a.hasBacking) || a.ctx.layout.dataFile) return a.writeZeroes(offset, length);
  const first = Math.ceil(offset / cs);
  const fullEnd = end === a.virtualSize ? Math.ceil(end / cs) : Math.floor(end / cs);
  if (first >= fullEnd) return zeroPartial(a, offset, end);
  if (offset < first * cs) await zeroPartial(a, offset, first * cs);
  const n = a.ctx.l2Entries;
  for (let c = first; c < fullEnd;) {
    const stop = Math.min(fullEnd, (Math.floor(c / n) + 1) * n);
    const from = c;
    await a.writer.exclusive(from, stop - 1, () => discardClusters(a, from, stop));
    c = stop;
  }
  if (fullEnd * cs < end) await zeroPartial(a, fullEnd * cs, end);
}

/** Whole clusters [c0, c1) of one L2 table; runs under the image lock. */
async function discardClusters(a: DiscardAccess, c0: number, c1: number): Promise<void> {
  const { ctx, cache } = a;
  const l = ctx.layout;
  const n = ctx.l2Entries;
  const l1i = Math.floor(c0 / n);
  const toZero = a.hasBacking;
  const needs = (t: Buffer, i: number): boolean => {
    const kind = l2Kind(t, i, l);
    const host = kind === KIND_COMPRESSED ? -1 : l2HostOffset(t, i, l);
    if (!toZero) return kind !== KIND_UNALLOCATED && !(kind === KIND_ZERO && host === 0);
    if (l.extended) return host !== 0 || l2ZeroBits(t, i, l) !== 0xffffffff;
    return !(kind === KIND_ZERO && host === 0);
  };
  const off = a.l2Offset(l1i);
  if (off === 0 && !toZero) return;
  if (off !== 0) {
    // Look first: making the table private may allocate or copy it.
    const cur = await cache.get('l2', off);
    let any = false;
    try {
      for (let c = c0; c < c1 && !any; c++) any = needs(cur.buf, c % n);
    } finally {
      cache.unpin(cur);
    }
    if (!any) return;
  }
  const e = await a.privateL2(l1i);
  try {
    for (let c = c0; c < c1; c++) {
      const i = c % n;
      if (!needs(e.buf, i)) continue;
      a.writer.dropReference(e.buf, i);
      if (toZero) setL2Zero(e.buf, i, l);
      else e.buf.fill(0, i * l.entrySize, (i + 1) * l.entrySize);
      e.dirty = true;
    }
  } finally {
    cache.unpin(e);
  }
  await cache.evict();
}

/** Zeroes [from, to), which holds no whole cluster: nothing when it reads as zeros already. */
async function zeroPartial(a: DiscardAccess, from: number, to: number): Promise<void> {
  const ext = await a.map(from, to - from);
  if (ext.every((x) => x.kind === 'zero' || x.kind === 'unallocated')) return;
  const cs = 2 ** a.ctx.clusterBits;
  for (let at = from; at < to;) {
    const stop = Math.min(to, (Math.floor(at / cs) + 1) * cs);
    const c = Math.floor(at / cs);
    const s = at;
    const done = a.ctx.layout.extended && (await a.writer.exclusive(c, c, () => zeroSubclusters(a, c, s, stop)));
    if (!done) await a.writer.write(s, Buffer.alloc(stop - s), 'none');
    at = stop;
  }
}

/**
 * Extended L2: the subclusters [from, to) covers become zero (or unallocated without a backing
 * file); a host cluster left with no allocated subcluster is freed. False when the range is not
 * whole subclusters or the cluster is compressed (the caller writes zeros).
 */
async function zeroSubclusters(a: DiscardAccess, c: number, from: number, to: number): Promise<boolean> {
  const { ctx, cache } = a;
  const l = ctx.layout;
  const cs = 2 ** ctx.clusterBits;
  const sc = cs / 32;
  const cStart = c * cs;
  const rel0 = from - cStart;
  const rel1 = to === a.virtualSize ? Math.ceil((to - cStart) / sc) * sc : to - cStart;
  if (rel0 % sc !== 0 || rel1 % sc !== 0) return false;
  const l1i = Math.floor(c / ctx.l2Entries);
  const i = c % ctx.l2Entries;
  const e = await a.privateL2(l1i);
  try {
    const kind = l2Kind(e.buf, i, l);
    if (kind === KIND_COMPRESSED) return false;
    const mask = subclusterMask(rel0 / sc, rel1 / sc);
    const host = kind === KIND_NORMAL ? l2HostOffset(e.buf, i, l) : 0;
    const alloc = (l2AllocBits(e.buf, i, l) & ~mask) >>> 0;
    const zero = a.hasBacking ? (l2ZeroBits(e.buf, i, l) | mask) >>> 0 : (l2ZeroBits(e.buf, i, l) & ~mask) >>> 0;
    if (alloc === 0 && host !== 0) {
      a.writer.dropReference(e.buf, i);
      setL2Extended(e.buf, i, l, 0, false, 0, zero);
    } else {
      setL2Extended(e.buf, i, l, host, l2Copied(e.buf, i, l), alloc, zero);
    }
    e.dirty = true;
  } finally {
    cache.unpin(e);
  }
  return true;
}
