import { createHash } from 'node:crypto';
import fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** Where the daemon serving a mountpoint writes its pid, so `vdiskfs unmount` can wait for it. */
export function pidFileFor(mountpoint: string): string {
  const id = createHash('sha1').update(path.resolve(mountpoint)).digest('hex').slice(0, 16);
  return path.join(os.tmpdir(), `vdiskfs-${id}.pid`);
}

export function defaultLogFile(mountpoint: string): string {
  return pidFileFor(mountpoint).replace(/\.pid$/, '.log');
}

export function readPid(mountpoint: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(pidFileFor(mountpoint), 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** A zombie (exited, not yet reaped by its parent) counts as gone: it flushed and closed everything. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}
