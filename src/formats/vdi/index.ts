import type { FormatDriver } from '../types';
import { looksLikeVdi } from './header';

/*
 * The VDI driver (VirtualBox), one job per file:
 *   header.ts      pre-header + header v1.1, UUIDs
 *   block-map.ts   the block map as a BlockTable: slots, zero markers, THE WRITE ORDER
 *   vdi-image.ts   open: header, map, a differencing image's parent found by UUID
 *   create.ts, check.ts   qemu-img create -f vdi / check
 * The bytes move through the shared block engine (../blocks/block-image.ts).
 */
// The implementation loads on first use: probing or listing a folder must not load every format's
// modules (start-up is most of a small command's time).
const load = () => import('./driver-impl');

export const vdiDriver: FormatDriver = {
  name: 'vdi',
  extensions: ['vdi'],
  probe: (head) => looksLikeVdi(head),
  open: async (path, opts) => (await load()).openVdi(path, opts),
  create: async (path, opts) => (await load()).createVdi(path, opts),
  check: async (path, opts) => (await load()).checkVdi(path, opts),
  // No backingFileOf: the parent is found by UUID, which takes opening files; the mount learns
  // it from the opened image (backingImage), under its confinement.
};
