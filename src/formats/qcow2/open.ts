/**
 * Opening a qcow2 image: header checks, feature bits (corrupt → read-only, dirty → rebuild
 * refcounts before any write, autoclear bits we do not maintain cleared), backing chain and
 * external data file, the active L1 or a snapshot's, the metadata cache and the allocator.
 */
import createDebug from 'debug';
import { VdiskError } from '../../io/errors';
import { HostFile } from '../../io/host-file';
import type { Image, OpenOptions } from '../types';
import {
  autoclearPatch,
  COMPAT_LAZY_REFCOUNTS,
  HeaderPatch,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  incompatiblePatch,
} from './header';
import { readMeta, readSnapshotTable } from './meta';
import { MetadataCache } from './metadata-cache';
import { DriverCounters, Qcow2Image } from './qcow2-image';
import { getRefcount, reftableEntry } from './refcount-block';
import { rebuildRefcounts } from './refcount-walk';
import { Refcounts } from './refcounts';
import { Snapshot, validateSnapshot } from './snapshot-table';

const log = createDebug('vdiskfs:qcow2');

/** Default cache: enough L2 tables to map 8 GiB (1 MiB at 64 KiB clusters), plus refcount blocks. */
export function defaultCacheSize(clusterSize: number, entrySize: number): number {
  const l2 = Math.min(32 << 20, Math.max(4 * clusterSize, ((8 * 2 ** 30) / (clusterSize / entrySize) / clusterSize) * clusterSize));
  return l2 + 4 * clusterSize;
}

export async function openQcow2(path: string, opts: OpenOptions): Promise<Qcow2Image> {
  const wantWrite = opts.writable && !opts.snapshot;
  const file = await HostFile.open(path, wantWrite);
  let dataFile: HostFile | undefined;
  let backing: Image | undefined;
  try {
    const meta = await readMeta(file);
    const h = meta.header;
    const cs = 2 ** h.clusterBits;
    let readOnly = !wantWrite;
    if (wantWrite && (h.incompatible & INCOMPAT_CORRUPT) !== 0n) {
      opts.warn(`${path}: qcow2 corrupt bit is set; opened read-only (run a repair first)`);
      readOnly = true;
    }
    if (meta.ext.dataFile) {
      dataFile = await HostFile.open(await opts.reach(meta.ext.dataFile, 'data file'), false);
      if (!readOnly) {
        opts.warn(`${path}: qcow2 with an external data file is served read-only`);
        readOnly = true;
      }
    }
    let backingPath: string | undefined;
    if (meta.backingName !== undefined) {
      backingPath = await opts.reach(meta.backingName, 'backing file');
      backing = await opts.openBacking(backingPath, meta.ext.backingFormat);
    }
    let snapCache: Promise<{ snapshots: Snapshot[]; length: number }> | undefined;
    const snapshotTable = (): Promise<{ snapshots: Snapshot[]; length: number }> => (snapCache ??= readSnapshotTable(file, meta));

    let l1Offset = h.l1TableOffset;
    let l1Size = h.l1Size;
    let virtualSize = h.size;
    if (opts.snapshot !== undefined) {
      const snaps = (await snapshotTable()).snapshots;
      const s = snaps.find((x) => x.name === opts.snapshot) ?? snaps.find((x) => x.id === opts.snapshot);
      if (!s) throw new VdiskError('ENOENT', `${path}: no snapshot named '${opts.snapshot}'`);
      validateSnapshot(s, cs);
      l1Offset = s.l1TableOffset;
      l1Size = s.l1Size;
      virtualSize = s.diskSize ?? h.size;
    }
    const l1 = Buffer.alloc(l1Size * 8);
    await file.read(l1, l1Offset, 'l1');

    const extended = (h.incompatible & INCOMPAT_EXTL2) !== 0n;
    const counters: DriverCounters = {
      metadataWrites: 0,
      dataWrites: 0,
      hostFlushes: 0,
      allocatedClusters: 0,
      syncAllocatedClusters: 0,
      directAllocatedClusters: 0,
    };
    let refcounts: Refcounts | undefined;
    // Assigned once the cache exists; the cache's callbacks read it later.
    // eslint-disable-next-line prefer-const
    let image: Qcow2Image | undefined;
    const cache = new MetadataCache(opts.tuning?.qcow2?.cacheSize ?? defaultCacheSize(cs, extended ? 16 : 8), cs, {
      load: async (kind, offset, into) => {
        // A table past everything allocated would be written back there: hostile, refuse.
        if (refcounts && offset + into.length > refcounts.nextFree * cs)
          throw VdiskError.corrupt(`qcow2 ${kind} table at ${offset} lies past the end of the image`);
        await file.read(into, offset, kind);
      },
      write: async (kind, offset, bufs) => {
        await file.write(bufs, offset, kind);
        counters.metadataWrites++;
      },
      sync: () => image!.syncHost(),
    });

    if (!readOnly) {
      if ((h.incompatible & INCOMPAT_DIRTY) !== 0n) {
        // Refcounts may be stale (lazy refcounts): rebuild before anything is written.
        opts.warn(`${path}: qcow2 dirty bit set; rebuilding refcounts`);
        const started = Date.now();
        const fresh = await rebuildRefcounts(file, meta, l1, await snapshotTable(), {
          fixCopied: false,
          ...(opts.progress ? { progress: opts.progress } : {}),
        });
        opts.warn(`${path}: refcounts rebuilt in ${((Date.now() - started) / 1000).toFixed(1)} s`);
        h.refcountTableOffset = fresh.offset;
        h.refcountTableClusters = fresh.clusters;
        h.incompatible &= ~INCOMPAT_DIRTY;
        await writeHeaderPatch(file, incompatiblePatch(h.incompatible));
        meta.fileSize = await file.size();
      }
      if (h.version === 3 && h.autoclear !== 0n) {
        log('%s: clearing autoclear bits 0x%s', path, h.autoclear.toString(16));
        h.autoclear = 0n;
        await writeHeaderPatch(file, autoclearPatch(0n));
      }
      const table = Buffer.alloc(h.refcountTableClusters * cs);
      await file.read(table, h.refcountTableOffset, 'reftable');
      const end = await usedEnd(file, table, cs, h.refcountOrder, meta.fileSize);
      refcounts = new Refcounts(file, cache, h.clusterBits, h.refcountOrder, table, h.refcountTableOffset, end, counters);
      refcounts.reclaimOnGrow = !dataFile; // data clusters in the image file itself: free ones can be punched
      if (h.version === 3 && (h.compatible & COMPAT_LAZY_REFCOUNTS) !== 0n) refcounts.lazyRefcounts = { header: h, marked: false };
    }
    image = new Qcow2Image({
      path,
      file,
      dataFile: dataFile ?? file,
      meta,
      readOnly,
      virtualSize,
      l1,
      l1Offset,
      cache,
      refcounts,
      counters,
      backing,
      backingPath,
      snapshots: async () => (await snapshotTable()).snapshots,
    });
    log('opened %s: v%d cluster %d size %d %s', path, h.version, cs, virtualSize, readOnly ? 'ro' : 'rw');
    return image;
  } catch (e) {
    await file.close().catch(() => undefined);
    await dataFile?.close().catch(() => undefined);
    await backing?.close().catch(() => undefined);
    throw e;
  }
}

async function writeHeaderPatch(file: HostFile, p: HeaderPatch): Promise<void> {
  await file.write(p.bytes, p.at, 'header');
  await file.datasync('header');
}

/** First cluster index past everything in use: the file end, or the last cluster with a refcount. */
async function usedEnd(file: HostFile, table: Buffer, cs: number, order: number, fileSize: number): Promise<number> {
  let end = Math.ceil(fileSize / cs);
  const perBlock = (cs * 8) >> order;
  const block = Buffer.alloc(cs);
  for (let b = table.length / 8 - 1; b >= 0; b--) {
    const off = reftableEntry(table, b);
    if (off === 0) continue;
    if (off % cs !== 0) throw VdiskError.corrupt(`qcow2 refcount block ${b} not cluster aligned`);
    if (off >= fileSize) throw VdiskError.corrupt(`qcow2 refcount block ${b} at ${off} lies past the end of the file`);
    end = Math.max(end, off / cs + 1);
    await file.read(block, off, 'refblock');
    for (let i = perBlock - 1; i >= 0; i--) {
      if (getRefcount(block, i, order) !== 0) {
        end = Math.max(end, b * perBlock + i + 1);
        break;
      }
    }
    break;
  }
  return end;
}
