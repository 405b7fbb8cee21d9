import { dirname, resolve } from 'node:path';
import type { FormatDriver } from '../types';
import { checkVdi } from './check';
import { createVdi } from './create';
import { HEADER_BYTES, looksLikeVdi, parseHeader } from './header';
import { findParent, openVdi } from './vdi-image';

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
  async backingFileOf(path, head) {
    if (head.length < HEADER_BYTES) return undefined;
    const h = parseHeader(head, path);
    if (h.type !== 4) return undefined;
    // The mount asks which images are parents (to show them read-only); opening them confines.
    return findParent(path, h, { reach: (name) => Promise.resolve(resolve(dirname(path), name)) }).catch(() => undefined);
  },
};
