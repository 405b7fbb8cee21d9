import type { Argv } from 'yargs';
import { Confinement, ImageLock, lockImage, openImage, type LockMode } from '../image';

/** `-U` / `--force-share`, as qemu-img's: read an image another process is writing anyway. */
export function withForceShare<T>(y: Argv<T>): Argv<T & { 'force-share': boolean }> {
  return y.option('force-share', {
    alias: 'U',
    type: 'boolean',
    default: false,
    describe: 'read the image even while another process (a VM, a vdiskfs mount) writes it; what you see may be inconsistent',
  });
}

/** What a reading command takes: qemu-img's shared read lock (no writers meanwhile), or with -U only "someone reads". */
export const readLockMode = (forceShare: boolean): LockMode => (forceShare ? 'read' : 'sharedRead');

/**
 * Locks every host file of an image (VMDK extents too) before a command reads or repairs it.
 * An image that does not open (check must still run on a broken one) is locked by its file alone.
 */
export async function lockForCommand(file: string, confinement: Confinement, mode: LockMode): Promise<ImageLock> {
  let files = [file];
  try {
    const image = await openImage(file, { writable: false, confinement, warn: () => undefined });
    files = image.hostFiles();
    await image.close();
  } catch {
    // the command itself reports what is wrong with the image
  }
  return lockImage(files, mode);
}
