import * as fs from 'node:fs';
import * as path from 'node:path';
import { HostFile } from '../../io/host-file';
import { VdiskError } from '../../io/errors';
import type { FormatDriver } from '../types';
import { checkVhdx } from './check';
import { createVhdx } from './create';
import { isVhdx } from './file-identifier';
import { readLayout } from './layout';
import { findParent } from './parent';
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
  /** The parent's path as the locator names it beside the child (the first name that exists), if any. */
  async backingFileOf(file) {
    const f = await HostFile.open(file, false);
    try {
      const l = await readLayout(file, f, false, true);
      if (!l.meta.hasParent) return undefined;
      return await findParent(file, l.meta, async (name) => {
        const p = path.resolve(path.dirname(file), name);
        if (!fs.existsSync(p)) throw new VdiskError('ENOENT', `${p} does not exist`);
        return p;
      });
    } catch {
      return undefined;
    } finally {
      await f.close();
    }
  },
};
