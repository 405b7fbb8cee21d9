/** What `qemu-img info --output=json` says about a VMDK image, field for field. */
import * as fsp from 'node:fs/promises';
import type { Image, ImageInfo } from '../types';
import type { VmdkExtent } from './extent';
import type { Layout } from './layout';
import { SparseExtent } from './sparse-extent';

export interface InfoParts {
  path: string;
  virtualSize: number;
  hostFiles: string[];
  layout: Layout;
  extents: VmdkExtent[];
  parentFile?: string;
  parent?: Image;
}

export async function vmdkInfo(p: InfoParts): Promise<ImageInfo> {
  let actual = 0;
  for (const f of p.hostFiles) {
    const st = await fsp.stat(f).catch(() => undefined);
    if (st) actual += st.blocks * 512;
  }
  const d = p.layout.descriptor;
  const first = p.extents.find((e) => e.grainBytes !== undefined);
  const info: ImageInfo = {
    filename: p.path,
    format: 'vmdk',
    'virtual-size': p.virtualSize,
    'actual-size': actual,
    ...(first ? { 'cluster-size': first.grainBytes } : {}),
    'dirty-flag': false, // QEMU reports it for VMDK and never sets it
    'format-specific': {
      type: 'vmdk',
      data: {
        cid: d?.cid ?? 0,
        'parent-cid': d?.parentCid ?? 0xffffffff,
        'create-type': d?.createType ?? 'monolithicSparse',
        extents: p.extents.map((e) => ({
          filename: e.file?.path ?? '',
          format: p.layout.embedded ? '' : e.type, // QEMU: a descriptor inside the extent names no type
          'virtual-size': e.size,
          ...(e.grainBytes !== undefined ? { 'cluster-size': e.grainBytes } : {}),
          ...(e instanceof SparseExtent && e.compressed ? { compressed: true } : {}),
        })),
      },
    },
  };
  if (p.parentFile) {
    info['backing-filename'] = d?.parentFileNameHint;
    info['full-backing-filename'] = p.parentFile;
    info['backing-filename-format'] = 'vmdk'; // a VMDK parent is always a VMDK (QEMU reports it so)
    if (p.parent) info['backing-image'] = await p.parent.info();
  }
  return info;
}
