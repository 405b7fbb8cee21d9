/**
 * `check -f vhdx`, qemu-img's semantics: a log that needs replay is a corruption (repaired by
 * replaying it, as `qemu-img check -r all` does by opening the image writable); BAT entries with
 * undefined states, past the end of the file, over the header section, log, BAT or metadata, or
 * over each other are corruptions (not repaired).
 */
import { HostFile } from '../../io/host-file';
import type { CheckResult, OpenOptions } from '../types';
import * as bat from './bat';
import { batProblems, readLayout } from './layout';

export async function checkVhdx(file: string, opts: OpenOptions & { repair: boolean }): Promise<CheckResult> {
  const result: CheckResult = { errors: 0, leaks: 0, corruptions: 0, messages: [] };
  const f = await HostFile.open(file, opts.repair);
  try {
    const l = await readLayout(file, f, opts.repair, true);
    if (l.replayed > 0) {
      result.corruptions++;
      if (opts.repair) {
        result.repaired = (result.repaired ?? 0) + 1;
        result.corruptionsFixed = (result.corruptionsFixed ?? 0) + 1;
        result.messages.push(`the log held ${l.replayed} entries to replay: replayed`);
      } else {
        result.messages.push(`the log holds ${l.replayed} entries to replay (check -r all replays them)`);
      }
    }
    for (const p of batProblems(l)) {
      result.corruptions++;
      result.messages.push(p);
    }
    let allocated = 0;
    for (let b = 0; b < l.geometry.payloadBlocks; b++) {
      const s = bat.entryState(l.bat, bat.payloadIndex(l.geometry, b));
      if (s === bat.FULLY_PRESENT || s === bat.PARTIALLY_PRESENT) allocated++;
    }
    result.stats = {
      totalClusters: l.geometry.payloadBlocks,
      allocatedClusters: allocated,
      fragmentedClusters: 0,
      compressedClusters: 0,
      imageEndOffset: l.fileSize,
    };
  } finally {
    await f.close();
  }
  return result;
}
