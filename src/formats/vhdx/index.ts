import type { FormatDriver } from '../types';
import { checkVhdx } from './check';
import { createVhdx } from './create';
import { isVhdx } from './file-identifier';
import { VhdxImage } from './vhdx-image';

export { VhdxImage };

/*
 * The VHDX driver ([MS-VHDX] v2), one job per file (README.md says the same at more length):
 *   crc32c.ts, guid.ts    checksums and GUIDs as stored
 *   file-identifier.ts    "vhdxfile" + creator;  header.ts  the two headers;  header-slots.ts  their updates
 *   region-table.ts       BAT / metadata regions;  metadata.ts  metadata table + items;  parent-locator.ts
 *   bat.ts                BAT entries and geometry (chunk ratio);  bat-table.ts  the BAT in memory, dirty sectors
 *   log-entry.ts          log entry / descriptors / data sectors;  log-replay.ts  active sequence, replay, overlay
 *   layout.ts             open: headers, log replay (disk or memory), regions, metadata, BAT checks
 *   metadata-log.ts       THE WRITE ORDER of metadata (BAT) through the log
 *   block-writer.ts       allocation, in-place writes, zero/discard by block
 *   parent.ts             differencing parents;  vhdx-image.ts  the Image;  create.ts, check.ts
 */
export const vhdxDriver: FormatDriver = {
  name: 'vhdx',
  extensions: ['vhdx', 'avhdx'],
  probe: (head) => isVhdx(head),
  open: (path, opts) => VhdxImage.open(path, opts),
  create: createVhdx,
  check: checkVhdx,
};
