/**
 * The qcow2 driver (qemu/qemu docs/interop/qcow2.txt): versions 2 and 3, every cluster size and
 * refcount width QEMU makes, backing chains, external data files (read-only), zero and
 * compressed (zlib, zstd) clusters, extended L2 entries, internal snapshots (read-only views),
 * and the write-back metadata cache with ordered flushing.
 */
import { HostFile } from '../../io/host-file';
import type { FormatDriver } from '../types';
import { checkQcow2 } from './check';
import { createQcow2 } from './create';
import { MAGIC } from './header';
import { readMeta, readSnapshots, resolveRelative } from './meta';
import { openQcow2 } from './open';
import { usableNames } from './snapshot-table';

export { Qcow2Image } from './qcow2-image';

async function withFile<T>(path: string, fn: (f: HostFile) => Promise<T>): Promise<T> {
  const f = await HostFile.open(path, false);
  try {
    return await fn(f);
  } finally {
    await f.close();
  }
}

export const qcow2Driver: FormatDriver = {
  name: 'qcow2',
  extensions: ['qcow2', 'qcow'],
  probe: (head) => head.length >= 4 && head.readUInt32BE(0) === MAGIC,
  open: (path, opts) => openQcow2(path, opts),
  async create(path, opts) {
    const spec = await createQcow2(path, opts);
    if (spec.preallocation === 'metadata') {
      const img = await openQcow2(path, { writable: true, openBacking: opts.openBacking, reach: opts.reach, warn: () => undefined });
      try {
        await img.preallocateMetadata(opts.progress);
      } finally {
        await img.close();
      }
    }
  },
  check: (path, opts) => checkQcow2(path, opts.repair, opts.progress),
  describe: (path, head) =>
    withFile(path, async (f) => {
      const m = await readMeta(f, head);
      return {
        auxiliaryFiles: m.ext.dataFile ? [resolveRelative(path, m.ext.dataFile)] : [],
        snapshots: usableNames(await readSnapshots(f, m)),
        ...(m.backingName === undefined ? {} : { backingFile: resolveRelative(path, m.backingName) }),
      };
    }),
};
