import * as path from 'node:path';
import type { ImageInfo } from '../image';

/**
 * qemu-img's path_combine: a relative name is taken relative to the folder of the name that
 * refers to it, as that name was written (so `info b.qcow2` shows `a.qcow2`, not /abs/a.qcow2).
 */
export function combinePath(base: string, name: string): string {
  if (name.startsWith('/')) return name;
  return base.slice(0, base.lastIndexOf('/') + 1) + name;
}

/**
 * The backing chain of `info` as qemu-img shows it: the top image under the name the user gave,
 * each backing image under the name its child's backing file resolves to, and file names inside
 * (VMDK extents) relative to those names. Returns the chain top first, without `backing-image`.
 */
export function chainAsGiven(info: ImageInfo, given: string): ImageInfo[] {
  const out: ImageInfo[] = [];
  let cur: ImageInfo | undefined = info;
  let name = given;
  while (cur) {
    const { 'backing-image': next, ...rest }: ImageInfo = cur;
    const real = cur.filename;
    const shown: ImageInfo = { ...rest, filename: name };
    if (cur['backing-filename'] !== undefined) shown['full-backing-filename'] = combinePath(name, cur['backing-filename']);
    const fs = cur['format-specific'];
    if (fs && Array.isArray(fs.data.extents)) {
      const extents = (fs.data.extents as Array<Record<string, unknown>>).map((e) => ({
        ...e,
        filename: renameWithin(typeof e.filename === 'string' ? e.filename : '', real, name),
      }));
      shown['format-specific'] = { ...fs, data: { ...fs.data, extents } };
    }
    out.push(shown);
    name = shown['full-backing-filename'] ?? name;
    cur = next;
  }
  return out;
}

/** A host file of an image (real path) named relative to the image's shown name. */
function renameWithin(file: string, realImage: string, shownImage: string): string {
  if (!file.startsWith('/')) return file;
  if (file === realImage) return shownImage;
  const rel = path.relative(path.dirname(realImage), file);
  return rel.startsWith('..') ? file : combinePath(shownImage, rel);
}
