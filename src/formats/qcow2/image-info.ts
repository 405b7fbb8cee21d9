/** What `qemu-img info --output=json` says about a qcow2 image, field for field. */
import type { HostFile } from '../../io/host-file';
import type { Image, ImageInfo } from '../types';
import { COMPAT_LAZY_REFCOUNTS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY } from './header';
import type { ImageMeta } from './meta';
import { Snapshot, snapshotInfo } from './snapshot-table';

export interface InfoParts {
  path: string;
  file: HostFile;
  meta: ImageMeta;
  virtualSize: number;
  extendedL2: boolean;
  backing?: Image;
  backingPath?: string;
  snapshots: () => Promise<Snapshot[]>;
}

export async function qcow2Info(p: InfoParts): Promise<ImageInfo> {
  const h = p.meta.header;
  const st = await p.file.stat();
  const info: ImageInfo = {
    filename: p.path,
    format: 'qcow2',
    'virtual-size': p.virtualSize,
    'actual-size': st.blocks * 512,
    'cluster-size': 2 ** h.clusterBits,
    'dirty-flag': (h.incompatible & INCOMPAT_DIRTY) !== 0n,
  };
  if (p.meta.backingName !== undefined) {
    info['backing-filename'] = p.meta.backingName;
    if (p.backingPath) info['full-backing-filename'] = p.backingPath;
    if (p.meta.ext.backingFormat) info['backing-filename-format'] = p.meta.ext.backingFormat;
  }
  const snaps = await p.snapshots();
  if (snaps.length) info.snapshots = snaps.map(snapshotInfo);
  const data: Record<string, unknown> = {
    compat: h.version === 2 ? '0.10' : '1.1',
    'compression-type': h.compressionType === 1 ? 'zstd' : 'zlib',
    'refcount-bits': 1 << h.refcountOrder,
  };
  if (h.version === 3) {
    data['lazy-refcounts'] = (h.compatible & COMPAT_LAZY_REFCOUNTS) !== 0n;
    data['corrupt'] = (h.incompatible & INCOMPAT_CORRUPT) !== 0n;
    data['extended-l2'] = p.extendedL2;
  }
  if (p.meta.ext.dataFile) data['data-file'] = p.meta.ext.dataFile;
  info['format-specific'] = { type: 'qcow2', data };
  if (p.backing) info['backing-image'] = await p.backing.info();
  return info;
}
