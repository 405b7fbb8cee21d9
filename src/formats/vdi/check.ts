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
    let slotsUsed = 0; // past the highest slot in use: where QEMU's next block must go
    for (let b = 0; b < header.blocks; b++) {
      const e = map.readUInt32LE(b * 4);
      if (e >= header.blocks) continue;
      allocated++;
      slotsUsed = Math.max(slotsUsed, e + 1);
    }
    if (allocated !== header.blocksAllocated) {
      res.messages.push(`ERROR: allocated blocks mismatch, is ${allocated}, should be ${header.blocksAllocated}`);
      // QEMU and VirtualBox put the next block at slot cBlocksAllocated: with a gap below the
      // highest slot in use (a map torn by a crash), the count of entries would hand out a slot
      // in use. Then the count only ever rises, to past that slot, and the mismatch stays.
      const dense = slotsUsed === allocated;
      const count = dense ? allocated : Math.max(header.blocksAllocated, slotsUsed);
      if (opts.repair && problems.length === 0 && count !== header.blocksAllocated) {
        setBlocksAllocated(region, count);
        await f.write(region.subarray(0, 512), 0, 'header');
        await f.datasync('flush');
      }
      if (opts.repair && problems.length === 0 && dense) {
        res.repaired = 1;
        res.corruptionsFixed = 1;
      } else {
        res.corruptions++;
        if (opts.repair && !dense)
          res.messages.push(
            `ERROR: slots in use up to ${slotsUsed} but only ${allocated} allocated: the count is kept past them, not lowered`,
          );
      }
    }
  } finally {
    await f.close();
  }
  return res;
}
