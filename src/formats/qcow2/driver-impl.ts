/** The qcow2 driver's entry points, loaded by index.ts when a qcow2 image is first used. */
import { HostFile } from '../../io/host-file';
import type { CreateOptions, FileDescription } from '../types';
import { createQcow2 } from './create';
import { type ImageMeta, metaFromHead, readMeta, readSnapshots, resolveRelative } from './meta';
import { openQcow2 } from './open';
import { usableNames } from './snapshot-table';

export { checkQcow2 } from './check';
export { openQcow2 };

/** qemu-img create -f qcow2, then the metadata of `preallocation=metadata` written through the image. */
export async function createQcow2Image(path: string, opts: CreateOptions): Promise<void> {
  const spec = await createQcow2(path, opts);
  if (spec.preallocation !== 'metadata') return;
  const img = await openQcow2(path, { writable: true, openBacking: opts.openBacking, reach: opts.reach, warn: () => undefined });
  try {
    await img.preallocateMetadata(opts.progress);
  } finally {
    await img.close();
  }
}

/** What a listing needs: the data file it owns, its internal snapshots, the backing file it names. */
export async function describeQcow2(path: string, head: Buffer): Promise<FileDescription> {
  // A listing probes every image of its folder: when the first 4 KiB (read by the probe) hold
  // it all and there is no snapshot table to read, the file is not opened again.
  const quick = metaFromHead(head);
  if (quick && quick.header.nbSnapshots === 0) return descriptionOf(path, quick, []);
  const f = await HostFile.open(path, false);
  try {
    const m = await readMeta(f, head);
    return descriptionOf(path, m, usableNames(await readSnapshots(f, m)));
  } finally {
    await f.close();
  }
}

function descriptionOf(path: string, m: Omit<ImageMeta, 'fileSize'>, snapshots: string[]): FileDescription {
  return {
    auxiliaryFiles: m.ext.dataFile ? [resolveRelative(path, m.ext.dataFile)] : [],
    snapshots,
    ...(m.backingName === undefined ? {} : { backingFile: resolveRelative(path, m.backingName) }),
  };
}
