/**
 * The qcow2 driver (qemu/qemu docs/interop/qcow2.txt): versions 2 and 3, every cluster size and
 * refcount width QEMU makes, backing chains, external data files (read-only), zero and
 * compressed (zlib, zstd) clusters, extended L2 entries, internal snapshots (read-only views),
 * and the write-back metadata cache with ordered flushing.
 */
import type { FormatDriver } from '../types';
import { MAGIC } from './header';

// The implementation loads on first use: probing or listing a folder must not load every format's
// modules (start-up is most of a small command's time).
const load = () => import('./driver-impl');

export const qcow2Driver: FormatDriver = {
  name: 'qcow2',
  extensions: ['qcow2', 'qcow'],
  probe: (head) => head.length >= 4 && head.readUInt32BE(0) === MAGIC,
  open: async (path, opts) => (await load()).openQcow2(path, opts),
  create: async (path, opts) => (await load()).createQcow2Image(path, opts),
  check: async (path, opts) => (await load()).checkQcow2(path, opts.repair, opts.progress),
  describe: async (path, head) => (await load()).describeQcow2(path, head),
};
