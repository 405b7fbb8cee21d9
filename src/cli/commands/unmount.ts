import fs from 'node:fs';
import * as path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { isMounted, isOurMount, unmountPath } from '../../fuse/mountinfo';
import { VdiskError } from '../../io/errors';
import { isAlive, readPid } from '../pidfile';
import { forgetMountRecord, readLogSince, readMountRecord } from '../mount-report';

export const unmountCommand: CommandModule<object, { mountpoint: string; timeout: number }> = {
  command: ['unmount <mountpoint>', 'umount <mountpoint>'],
  describe: 'unmount, after every image is flushed and closed',
  builder: (y: Argv) =>
    y
      .positional('mountpoint', { type: 'string', demandOption: true })
      .option('timeout', { type: 'number', default: 120, describe: 'seconds to wait for the images to be flushed' })
      .example('$0 unmount /mnt/raw', 'unmount and wait until the images are closed'),
  handler: async (argv) => {
    const mnt = path.resolve(argv.mountpoint);
    if (!isMounted(mnt)) throw new VdiskError('EINVAL', `${mnt} is not mounted`);
    if (!isOurMount(mnt)) throw new VdiskError('EINVAL', `${mnt} is not a vdiskfs mount`);
    const pid = readPid(mnt);
    // A background mount with --stats logs its counters as it closes the images: show them here.
    const record = readMountRecord(mnt);
    const logStart = record?.stats ? fs.statSync(record.logFile, { throwIfNoEntry: false })?.size : undefined;
    await unmountPath(mnt, false).catch((e: VdiskError) => {
      throw new VdiskError('EBUSY', `${e.message} (close the files or loop devices using it: fuser -vm ${mnt}; losetup -a)`);
    });
    // The daemon notices the unmount, flushes and closes every image, then exits.
    if (pid) {
      const deadline = Date.now() + argv.timeout * 1000;
      while (isAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      if (isAlive(pid)) throw new VdiskError('EBUSY', `unmounted, but the vdiskfs process ${pid} is still flushing after ${argv.timeout}s`);
    }
    forgetMountRecord(mnt);
    if (record && logStart !== undefined) {
      // Debug lines (timestamped) stay in the log; the counters and any closing message are shown.
      for (const line of readLogSince(record.logFile, logStart)) if (!/^\d{4}-\d\d-\d\dT/.test(line)) process.stdout.write(line + '\n');
    }
  },
};
