/**
 * `qemu-img check` for VDI (QEMU's block/vdi.c vdi_co_check): every allocated entry names a slot
 * inside the image, no slot is used twice, and cBlocksAllocated equals the allocated entries.
 * `-r all` rewrites the count (the one thing a crash between map and header can leave behind).
 */
import { HostFile } from '../../io/host-file';
import type { CheckResult, OpenOptions } from '../types';
import { setBlocksAllocated } from './header';
import { mapProblems, readVdi } from './vdi-image';

export async function checkVdi(file: string, opts: OpenOptions & { repair: boolean }): Promise<CheckResult> {
  const res: CheckResult = { errors: 0, leaks: 0, corruptions: 0, messages: [] };
  const f = await HostFile.open(file, opts.repair);
  try {
    const { header, region, map } = await readVdi(f);
    const problems = mapProblems(header, map);
    for (const p of problems) res.messages.push(`ERROR: ${p}`);
    res.corruptions += problems.length;
    let allocated = 0;
    for (let b = 0; b < header.blocks; b++) if (map.readUInt32LE(b * 4) < header.blocks) allocated++;
    if (allocated !== header.blocksAllocated) {
      res.messages.push(`ERROR: allocated blocks mismatch, is ${allocated}, should be ${header.blocksAllocated}`);
      if (opts.repair && problems.length === 0) {
        setBlocksAllocated(region, allocated);
        await f.write(region.subarray(0, 512), 0, 'header');
        await f.datasync('flush');
        res.repaired = 1;
        res.corruptionsFixed = 1;
      } else {
        res.corruptions++;
      }
    }
  } finally {
    await f.close();
  }
  return res;
}
