/**
 * "Where does this guest range live?" — answered from the L1 table and cached L2 tables only,
 * synchronously, so lock-free fast paths can use it. Returns undefined when an L2 table that the
 * range needs is not in the cache (the caller then loads it under the image lock and asks again).
 */
import { VdiskError } from '../../io/errors';
import type { MetadataCache } from './metadata-cache';
import {
  KIND_COMPRESSED,
  KIND_NORMAL,
  KIND_UNALLOCATED,
  KIND_ZERO,
  L2Layout,
  l1Offset,
  l2AllocBits,
  l2Compressed,
  l2HostOffset,
  l2Kind,
  l2ZeroBits,
} from './table-entry';

export interface Piece {
  guest: number;   // guest offset
  length: number;  // bytes
  kind: number;    // KIND_*
  host: number;    // normal: host offset of `guest`; compressed: host offset of the compressed bytes
  cSize: number;   // compressed: bytes stored
  cluster: number; // compressed: guest offset of the cluster start
}

export interface MapContext {
  clusterBits: number;
  layout: L2Layout;
  l2Entries: number;
  l1: Buffer;
  l1Size: number;
  cache: MetadataCache;
}

export function l2TableOffset(ctx: MapContext, l1i: number): number {
  if (l1i >= ctx.l1Size) return 0;
  const off = l1Offset(ctx.l1, l1i);
  if (off % 2 ** ctx.clusterBits !== 0) throw VdiskError.corrupt(`qcow2 L2 table offset ${off} (L1 index ${l1i}) not cluster aligned`);
  return off;
}

export function mapSync(ctx: MapContext, offset: number, length: number): Piece[] | undefined {
  const cs = 2 ** ctx.clusterBits;
  const tableSpan = ctx.l2Entries * cs;
  const out: Piece[] = [];
  const push = (kind: number, guest: number, len: number, host: number): void => {
    const prev = out[out.length - 1];
    if (prev && prev.kind === kind && kind !== KIND_COMPRESSED && (kind !== KIND_NORMAL || prev.host + prev.length === host)) {
      prev.length += len;
      return;
    }
    out.push({ guest, length: len, kind, host, cSize: 0, cluster: 0 });
  };
  const end = offset + length;
  let pos = offset;
  while (pos < end) {
    const gc = Math.floor(pos / cs);
    const l1i = Math.floor(gc / ctx.l2Entries);
    const l2off = l2TableOffset(ctx, l1i);
    if (l2off === 0) {
      const stop = Math.min(end, (l1i + 1) * tableSpan);
      push(KIND_UNALLOCATED, pos, stop - pos, 0);
      pos = stop;
      continue;
    }
    const t = ctx.cache.peek(l2off);
    if (!t) return undefined;
    const l2i = gc % ctx.l2Entries;
    const cStart = gc * cs;
    const cEnd = Math.min(end, cStart + cs);
    const kind = l2Kind(t, l2i, ctx.layout);
    if (kind === KIND_COMPRESSED) {
      const c = l2Compressed(t, l2i, ctx.layout);
      out.push({ guest: pos, length: cEnd - pos, kind, host: c.host, cSize: c.size, cluster: cStart });
    } else if (!ctx.layout.extended) {
      if (kind === KIND_NORMAL) {
        const host = l2HostOffset(t, l2i, ctx.layout);
        if (host % cs !== 0) throw VdiskError.corrupt(`qcow2 data cluster offset ${host} not cluster aligned`);
        push(kind, pos, cEnd - pos, host + (pos - cStart));
      } else {
        push(kind, pos, cEnd - pos, 0);
      }
    } else {
      const host = l2HostOffset(t, l2i, ctx.layout);
      if (host % cs !== 0) throw VdiskError.corrupt(`qcow2 data cluster offset ${host} not cluster aligned`);
      const alloc = l2AllocBits(t, l2i, ctx.layout);
      const zero = l2ZeroBits(t, l2i, ctx.layout);
      if (alloc & zero) throw VdiskError.corrupt(`qcow2 subcluster both allocated and zero (cluster ${gc})`);
      if (alloc !== 0 && host === 0 && !ctx.layout.dataFile) throw VdiskError.corrupt(`qcow2 allocated subclusters without a host cluster (cluster ${gc})`);
      const sc = cs / 32;
      while (pos < cEnd) {
        const si = Math.floor((pos - cStart) / sc);
        const sEnd = Math.min(cEnd, cStart + (si + 1) * sc);
        const bit = 1 << si;
        if (alloc & bit) push(KIND_NORMAL, pos, sEnd - pos, host + (pos - cStart));
        else if (zero & bit) push(KIND_ZERO, pos, sEnd - pos, 0);
        else push(KIND_UNALLOCATED, pos, sEnd - pos, 0);
        pos = sEnd;
      }
    }
    pos = cEnd;
  }
  return out;
}

/** L2 table offsets (non-zero) that a guest range needs. */
export function tablesFor(ctx: MapContext, offset: number, length: number): number[] {
  const span = ctx.l2Entries * 2 ** ctx.clusterBits;
  const out: number[] = [];
  const last = Math.floor((offset + Math.max(length, 1) - 1) / span);
  for (let l1i = Math.floor(offset / span); l1i <= last; l1i++) {
    const o = l2TableOffset(ctx, l1i);
    if (o) out.push(o);
  }
  return out;
}

