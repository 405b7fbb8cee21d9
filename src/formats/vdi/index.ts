import type { FormatDriver } from '../types';
import { checkVdi } from './check';
import { createVdi } from './create';
import { looksLikeVdi } from './header';
import { openVdi } from './vdi-image';

/*
 * The VDI driver (VirtualBox), one job per file:
 *   header.ts      pre-header + header v1.1, UUIDs
 *   block-map.ts   the block map as a BlockTable: slots, zero markers, THE WRITE ORDER
 *   vdi-image.ts   open: header, map, a differencing image's parent found by UUID
 *   create.ts, check.ts   qemu-img create -f vdi / check
 * The bytes move through the shared block engine (../blocks/block-image.ts).
 */
export const vdiDriver: FormatDriver = {
  name: 'vdi',
  extensions: ['vdi'],
  probe: (head) => looksLikeVdi(head),
  open: openVdi,
  create: createVdi,
  check: checkVdi,
  // No backingFileOf: the parent is found by UUID, which takes opening files; the mount learns
  // it from the opened image (backingImage), under its confinement.
};
