import type { FormatDriver } from '../types';
import { isVhdx } from './file-identifier';

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
// The implementation loads on first use: probing or listing a folder must not load every format's
// modules (start-up is most of a small command's time).
const load = () => import('./driver-impl');

export const vhdxDriver: FormatDriver = {
  name: 'vhdx',
  extensions: ['vhdx', 'avhdx'],
  probe: (head) => isVhdx(head),
  open: async (path, opts) => (await load()).VhdxImage.open(path, opts),
  create: async (path, opts) => (await load()).createVhdx(path, opts),
  check: async (path, opts) => (await load()).checkVhdx(path, opts),
};
