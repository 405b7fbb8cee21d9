import * as path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { isMounted, isOurMount, unmountPath } from '../../fs/fuse-session';
import { VdiskError } from '../../io/errors';
import { isAlive, readPid } from '../pidfile';

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
    await unmountPath(mnt, false).catch((e: VdiskError) => {
      throw new VdiskError('EBUSY', `${e.message} (close the files or loop devices using it: fuser -vm ${mnt}; losetup -a)`);
    });
    // The daemon notices the unmount, flushes and closes every image, then exits.
    if (pid) {
      const deadline = Date.now() + argv.timeout * 1000;
      while (isAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      if (isAlive(pid)) throw new VdiskError('EBUSY', `unmounted, but the vdiskfs process ${pid} is still flushing after ${argv.timeout}s`);
    }
  },
};
