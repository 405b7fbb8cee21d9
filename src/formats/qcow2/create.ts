/**
 * `create -f qcow2` with qemu-img's option names: cluster_size, compat (0.10|v2|1.1|v3),
 * refcount_bits, lazy_refcounts, extended_l2, compression_type, preallocation=off|metadata.
 * Layout like qemu-img: header (+ extensions, backing name) in cluster 0, then the refcount
 * table, the refcount blocks, the L1 table.
 */
import { VdiskError } from '../../io/errors';
import { HostFile } from '../../io/host-file';
import type { CreateOptions } from '../types';
import { serializeExtensions, STANDARD_FEATURES } from './extensions';
import {
  COMPAT_LAZY_REFCOUNTS,
  Header,
  INCOMPAT_COMPRESSION,
  INCOMPAT_EXTL2,
  MAX_L1_BYTES,
  serializeHeader,
  V2_SIZE,
  V3_SIZE,
} from './header';
import { resolveRelative } from './meta';
import { setRefcount, setReftableEntry } from './refcount-block';

export interface CreateSpec {
  version: 2 | 3;
  clusterBits: number;
  refcountOrder: number;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: number;
  preallocation: 'off' | 'metadata';
}

export function parseSize(s: string, what: string): number {
  const m = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(s.trim());
  if (!m) throw VdiskError.invalid(`${what}: cannot parse '${s}'`);
  const mult: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };
  return Number(m[1]) * mult[m[2]!.toLowerCase()]!;
}

function bool(v: string | undefined, what: string): boolean {
  if (v === undefined) return false;
  if (['on', 'true', 'yes', '1'].includes(v)) return true;
  if (['off', 'false', 'no', '0'].includes(v)) return false;
  throw VdiskError.invalid(`${what}: expected on/off, got '${v}'`);
}

export function parseCreateOptions(o: Record<string, string>): CreateSpec {
  const known = [
    'cluster_size',
    'compat',
    'refcount_bits',
    'lazy_refcounts',
    'extended_l2',
    'preallocation',
    'compression_type',
    'backing_file',
    'backing_fmt',
  ];
  for (const k of Object.keys(o)) if (!known.includes(k)) throw VdiskError.invalid(`qcow2 does not support option '${k}'`);
  const compat = o['compat'] ?? '1.1';
  const version = compat === '0.10' || compat === 'v2' ? 2 : compat === '1.1' || compat === 'v3' ? 3 : 0;
  if (!version) throw VdiskError.invalid(`compat must be 0.10, v2, 1.1 or v3, not '${compat}'`);
  const cs = o['cluster_size'] ? parseSize(o['cluster_size'], 'cluster_size') : 65536;
  const clusterBits = Math.log2(cs);
  if (!Number.isInteger(clusterBits) || clusterBits < 9 || clusterBits > 21)
    throw VdiskError.invalid('cluster_size must be a power of two between 512 and 2M');
  const rb = o['refcount_bits'] ? Number(o['refcount_bits']) : 16;
  const refcountOrder = Math.log2(rb);
  if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > 6)
    throw VdiskError.invalid('refcount_bits must be a power of two from 1 to 64');
  const lazyRefcounts = bool(o['lazy_refcounts'], 'lazy_refcounts');
  const extendedL2 = bool(o['extended_l2'], 'extended_l2');
  const ct = o['compression_type'] ?? 'zlib';
  if (ct !== 'zlib' && ct !== 'zstd') throw VdiskError.invalid(`compression_type must be zlib or zstd`);
  const prealloc = o['preallocation'] ?? 'off';
  if (prealloc !== 'off' && prealloc !== 'metadata') throw VdiskError.invalid(`preallocation must be off or metadata`);
  if (version === 2 && (refcountOrder !== 4 || lazyRefcounts || extendedL2 || ct !== 'zlib')) {
    throw VdiskError.invalid('compat=0.10 supports only refcount_bits=16, no lazy_refcounts, extended_l2 or zstd');
  }
  if (extendedL2 && cs < 16384) throw VdiskError.invalid('extended_l2 needs cluster_size >= 16k');
  return {
    version,
    clusterBits,
    refcountOrder,
    lazyRefcounts,
    extendedL2,
    compressionType: ct === 'zstd' ? 1 : 0,
    preallocation: prealloc,
  };
}

/** Writes an empty image; returns the spec (the caller preallocates metadata if asked). */
export async function createQcow2(path: string, opts: CreateOptions): Promise<CreateSpec> {
  const spec = parseCreateOptions(opts.options);
  const backingFile = opts.backingFile ?? opts.options['backing_file'];
  const backingFormat = opts.backingFormat ?? opts.options['backing_fmt'];
  let size = opts.size;
  if (backingFile && !size) {
    const b = await opts.openBacking(resolveRelative(path, backingFile), backingFormat); // relative to the new image's folder
    size = b.virtualSize;
    await b.close();
  }
  if (!Number.isSafeInteger(size) || size < 0) throw VdiskError.invalid(`bad size ${size}`);
  size = Math.ceil(size / 512) * 512; // qemu-img rounds up to whole sectors too
  const cs = 2 ** spec.clusterBits;
  const entrySize = spec.extendedL2 ? 16 : 8;
  const l1Size = Math.ceil(size / ((cs / entrySize) * cs));
  if (l1Size * 8 > MAX_L1_BYTES) throw new VdiskError('EFBIG', `size ${size} too large for cluster_size ${cs}`);
  const l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / cs));
  const perBlock = (cs * 8) >> spec.refcountOrder;
  let blocks = 1;
  let tableClusters = 1;
  for (;;) {
    const total = 1 + tableClusters + blocks + l1Clusters;
    const nb = Math.ceil(total / perBlock);
    const nt = Math.ceil((nb * 8) / cs);
    if (nb <= blocks && nt <= tableClusters) break;
    blocks = Math.max(blocks, nb);
    tableClusters = Math.max(tableClusters, nt);
  }
  const total = 1 + tableClusters + blocks + l1Clusters;
  const h: Header = {
    version: spec.version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: spec.clusterBits,
    size,
    cryptMethod: 0,
    l1Size,
    l1TableOffset: (1 + tableClusters + blocks) * cs,
    refcountTableOffset: cs,
    refcountTableClusters: tableClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatible: (spec.extendedL2 ? INCOMPAT_EXTL2 : 0n) | (spec.compressionType ? INCOMPAT_COMPRESSION : 0n),
    compatible: spec.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n,
    autoclear: 0n,
    refcountOrder: spec.refcountOrder,
    headerLength: spec.version === 3 ? V3_SIZE : V2_SIZE,
    compressionType: spec.compressionType,
  };
  const ext = serializeExtensions({
    backingFormat: backingFile ? backingFormat : undefined,
    features: spec.version === 3 ? STANDARD_FEATURES : [],
  });
  const cluster0 = Buffer.alloc(cs);
  let at = h.headerLength + ext.length;
  if (backingFile) {
    const name = Buffer.from(backingFile);
    if (name.length > 1023 || at + name.length > cs) throw VdiskError.invalid('backing file name too long');
    h.backingFileOffset = at;
    h.backingFileSize = name.length;
    name.copy(cluster0, at);
    at += name.length;
  }
  serializeHeader(h).copy(cluster0, 0);
  ext.copy(cluster0, h.headerLength);
  const table = Buffer.alloc(tableClusters * cs);
  const blockBuf = Buffer.alloc(blocks * cs);
  for (let b = 0; b < blocks; b++) setReftableEntry(table, b, (1 + tableClusters + b) * cs);
  for (let c = 0; c < total; c++) setRefcount(blockBuf.subarray(Math.floor(c / perBlock) * cs), c % perBlock, spec.refcountOrder, 1);
  const f = await HostFile.create(path);
  try {
    await f.write([cluster0, table, blockBuf, Buffer.alloc(l1Clusters * cs)], 0, 'header');
    await f.datasync();
  } finally {
    await f.close();
  }
  return spec;
}
