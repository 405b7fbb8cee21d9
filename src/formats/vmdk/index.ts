import type { FormatDriver } from '../types';
import { looksLikeDescriptor } from './descriptor';

/*
 * The VMDK driver, one job per file:
 *   descriptor.ts        text descriptor (kept line for line; only the CID is rewritten)
 *   layout.ts            where the descriptor lives, extent files, parent (open/aux/backing)
 *   sparse-header.ts     KDMV SparseExtentHeader;  stream-marker.ts  streamOptimized markers
 *   sparse-extent.ts     hosted sparse / stream extent: GD, RGD, grain tables, mapping, flush
 *   grain-directory.ts   GD/RGD read and encode;  compressed-grain.ts  inflating stream grains
 *   grain-table-cache.ts grain tables in memory (LRU, pins, dirty versions)
 *   grain-allocator.ts   THE SEED: multi-grain allocation, one vectored write, entries after
 *                        (works against GrainSpace, which sparse-extent.ts implements)
 *   flat-extent.ts       FLAT/VMFS and ZERO extents
 *   cowd-header.ts       COWD (vmfsSparse) header, mapped by sparse-extent.ts, read-only
 *   se-sparse-*.ts       ESXi seSparse headers and extent, read-only
 *   vmdk-image.ts        the Image: extents end to end, parent, CID, read loop, map;  vmdk-info.ts  info
 *   create.ts, check.ts  qemu-img create -f vmdk / check
 */

// The implementation loads on first use: probing or listing a folder must not load every format's
// modules (start-up is most of a small command's time).
const load = () => import('./driver-impl');

/** VMDK: a KDMV sparse extent with an embedded descriptor, or a text descriptor naming extents. */
export const vmdkDriver: FormatDriver = {
  name: 'vmdk',
  extensions: ['vmdk'],
  probe: (head) => {
    if (head.length >= 4) {
      const magic = head.toString('latin1', 0, 4);
      if (magic === 'KDMV' || magic === 'COWD') return true;
    }
    return looksLikeDescriptor(head.toString('latin1', 0, Math.min(head.length, 1024)));
  },
  open: async (path, opts) => (await load()).VmdkImage.open(path, opts),
  create: async (path, opts) => (await load()).createVmdk(path, opts),
  check: async (path, opts) => (await load()).checkVmdk(path, opts),
  describe: async (path) => (await load()).describeVmdk(path),
};
