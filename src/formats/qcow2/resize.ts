/**
 * Growing a qcow2 image: a bigger L1 table when the new size needs one (in place when its
 * clusters have room, else a new table whose refcounts are durable first), then one header write
 * (size, l1_size, l1_table_offset) once the table is durable. Frees of the old table are queued.
 */
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { Header, MAX_L1_BYTES, sizeAndL1Patch } from './header';
import type { L1Table } from './l1-table';
import type { MapContext } from './mapping';
import type { MetadataCache } from './metadata-cache';
import type { Refcounts } from './refcounts';

export interface ResizeParts {
  path: string;
  file: HostFile;
  header: Header;
  ctx: MapContext;
  l1: L1Table;
  cache: MetadataCache;
  refcounts: Refcounts;
  counters: { metadataWrites: number; allocatedClusters: number };
}

/** Under the image lock, after a flush; updates ctx, the L1 table's offset and the header. */
export async function growImage(p: ResizeParts, newSize: number): Promise<void> {
  const { ctx, file, cache, counters } = p;
  const rc = p.refcounts;
  const cs = 2 ** ctx.clusterBits;
  const span = ctx.l2Entries * cs;
  const need = Math.ceil(newSize / span);
  let l1 = ctx.l1;
  let l1Off = p.l1.offset;
  let oldTable: { offset: number; bytes: number } | undefined;
  if (need > ctx.l1Size) {
    if (need * 8 > MAX_L1_BYTES) throw new VdiskError('EFBIG', `${p.path}: ${newSize} bytes needs an L1 table beyond QEMU's limit`);
    const oldBytes = Math.ceil((ctx.l1Size * 8) / cs) * cs;
    l1 = Buffer.alloc(need * 8);
    ctx.l1.copy(l1);
    if (need * 8 <= oldBytes && ctx.l1Size > 0) {
      // The table's clusters have room: write the new (empty) entries in place.
      await file.write(l1.subarray(ctx.l1Size * 8), l1Off + ctx.l1Size * 8, 'l1');
    } else {
      const clusters = Math.ceil((need * 8) / cs);
      l1Off = await rc.allocate(clusters);
      counters.allocatedClusters += clusters;
      await cache.flushSide('refblock'); // the new table's refcounts durable before the header points at it
      await file.write(Buffer.concat([l1, Buffer.alloc(clusters * cs - l1.length)]), l1Off, 'l1');
      if (ctx.l1Size > 0) oldTable = { offset: p.l1.offset, bytes: oldBytes };
    }
    counters.metadataWrites++;
    await cache.sync();
  }
  const h = sizeAndL1Patch(newSize, Math.max(need, ctx.l1Size), l1Off);
  await file.write(h.bytes, h.at, 'header');
  counters.metadataWrites++;
  await cache.sync();
  // Freed only once the header points away from it: freed before, a failed header write would
  // leave the table in use queued for its decrement and, once that is flushed, for a punch.
  if (oldTable) rc.free(oldTable.offset, oldTable.bytes);
  ctx.l1 = l1;
  ctx.l1Size = l1.length / 8;
  p.l1.offset = l1Off;
  p.header.size = newSize;
  p.header.l1Size = ctx.l1Size;
  p.header.l1TableOffset = l1Off;
}
