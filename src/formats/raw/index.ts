import type { FormatDriver } from '../types';

// The implementation loads on first use: probing or listing a folder must not load every format's
// modules (start-up is most of a small command's time).
const load = () => import('./raw-image');

/** Raw has no signature: it is whatever no other driver recognises, named .img or .raw. */
export const rawDriver: FormatDriver = {
  name: 'raw',
  extensions: ['img', 'raw'],
  probe: () => true,
  open: async (path, opts) => (await load()).RawImage.open(path, opts.writable),
  create: async (path, opts) => (await load()).createRaw(path, opts.size),
  // No check: raw has no metadata to be inconsistent (qemu-img check says so, exit 63).
};
