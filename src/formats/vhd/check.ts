/**
 * A check of a VHD's structure (qemu-img has none for vpc: exit 63 there). Everything readLayout
 * refuses (blocks over the metadata or each other, a BAT past the end) is a corruption; blocks
 * whose bytes lie past the end of the file read as zeros and are reported as errors of the image.
 */
import { HostFile } from '../../io/host-file';
import { isVdiskError } from '../../io/errors';
import type { CheckResult, OpenOptions } from '../types';
import { bitmapBytesFor } from './bat';
import { BAT_UNUSED, SECTOR } from './dynamic-header';
import { FOOTER_BYTES } from './footer';
import { readLayout } from './vhd-image';

export async function checkVhd(file: string, _opts: OpenOptions & { repair: boolean }): Promise<CheckResult> {
  const res: CheckResult = { errors: 0, leaks: 0, corruptions: 0, messages: [] };
  const f = await HostFile.open(file, false);
  try {
    const l = await readLayout(f);
    if (l.header && l.bat) {
      const span = bitmapBytesFor(l.header.blockSize) + l.header.blockSize;
      for (let b = 0; b < l.header.maxTableEntries; b++) {
        const e = l.bat.readUInt32BE(b * 4);
        if (e !== BAT_UNUSED && e * SECTOR + span > l.fileSize - FOOTER_BYTES) {
          res.corruptions++;
          res.messages.push(`ERROR: block ${b} at ${e * SECTOR} runs past the end of the file`);
        }
      }
    }
  } catch (e) {
    if (!isVdiskError(e) || e.code !== 'ECORRUPT') throw e;
    res.corruptions++;
    res.messages.push(`ERROR: ${e.message}`);
  } finally {
    await f.close();
  }
  return res;
}
