import fs from 'node:fs';
import * as path from 'node:path';
import { pidFileFor } from './pidfile';

/**
 * What a background mount tells the user once it serves: what its daemon said while starting
 * (one line per image left out, with the reason), the log path, and one summary line. The daemon
 * counted the images itself before saying it serves (src/fs/view-tree.ts census), so the
 * left-out lines are in the log by now.
 */
export function reportBackgroundMount(
  mountpoint: string,
  logFile: string,
  logStart: number,
  counted: { shown?: number; leftOut?: number },
): void {
  const said = readLogSince(logFile, logStart).filter((l) => l.startsWith('vdiskfs: '));
  for (const line of said) process.stderr.write(line + '\n');
  process.stdout.write(`vdiskfs: logging to ${logFile}\n`);
  const { shown, leftOut } = counted;
  if (shown !== undefined && leftOut !== undefined)
    process.stdout.write(`vdiskfs: ${mountpoint}: ${shown} image${shown === 1 ? '' : 's'} shown, ${leftOut} left out\n`);
}

export function readLogSince(logFile: string, start: number): string[] {
  try {
    const fd = fs.openSync(logFile, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const buf = Buffer.alloc(Math.max(0, Math.min(size - start, 1 << 20)));
      fs.readSync(fd, buf, 0, buf.length, start);
      return buf.toString('utf8').split('\n').filter(Boolean);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return [];
  }
}

/** What `vdiskfs unmount` needs to know about a background mount: its log, and whether it keeps --stats. */
export interface MountRecord {
  logFile: string;
  stats: boolean;
  /** real path of the images folder */ images?: string;
}

const recordFileFor = (mountpoint: string) => pidFileFor(mountpoint).replace(/\.pid$/, '.mount.json');

export function writeMountRecord(mountpoint: string, record: MountRecord): void {
  fs.writeFileSync(recordFileFor(mountpoint), JSON.stringify(record) + '\n');
}

export function readMountRecord(mountpoint: string): MountRecord | undefined {
  try {
    const r = JSON.parse(fs.readFileSync(recordFileFor(mountpoint), 'utf8')) as MountRecord;
    return typeof r.logFile === 'string' ? r : undefined;
  } catch {
    return undefined;
  }
}

export function forgetMountRecord(mountpoint: string): void {
  fs.rmSync(recordFileFor(mountpoint), { force: true });
}

/**
 * True when `mountpoint` is a vdiskfs mount that this tool started in the background for the
 * same images folder: `mount -a` (fstab) runs every line again, and that must be a quiet success.
 */
export function servedAlready(images: string, mountpoint: string, isOurMount: (dir: string) => boolean): boolean {
  const mnt = path.resolve(mountpoint);
  if (!isOurMount(mnt)) return false;
  const real = fs.realpathSync(images, { encoding: 'utf8' });
  return readMountRecord(mnt)?.images === real;
}
