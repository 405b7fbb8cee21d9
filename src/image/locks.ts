import * as fs from 'node:fs/promises';

/**
 * QEMU locks the image files it opens with OFD byte-range locks: byte 100+N while it uses
 * permission N (N=1: write), byte 200+N when it refuses to share it. We cannot take such locks
 * from Node, but we can see them in /proc/locks, and a running VM's disk must never be written
 * behind its back.
 */
export interface ForeignLocks {
  /** Someone holds QEMU's "write permission in use" lock (a running VM, qemu-io, qemu-storage-daemon). */
  writer: boolean;
  /** Someone refuses to share writing. */
  writeUnshared: boolean;
  count: number;
}

const QEMU_PERM_WRITE = 1;

export async function foreignLocks(file: string, procLocks = '/proc/locks'): Promise<ForeignLocks | undefined> {
  const [st, text] = await Promise.all([fs.stat(file), fs.readFile(procLocks, 'utf8').catch(() => '')]);
  // /proc/locks names a file as MAJOR:MINOR:INODE, device numbers in hex.
  const major = Math.floor(st.dev / 256) & 0xfff;
  const minor = (st.dev & 0xff) | ((Math.floor(st.dev / 4096) & 0xfff00));
  const id = `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${st.ino}`;
  let writer = false;
  let writeUnshared = false;
  let count = 0;
  for (const line of text.split('\n')) {
    if (line.includes('->')) continue; // a waiter, not a holder
    const f = line.trim().split(/\s+/);
    if (f[5] !== id) continue;
    // Adjacent bytes are merged into one range ("100 101"): test containment.
    const start = Number(f[6]);
    const end = f[7] === 'EOF' ? Infinity : Number(f[7]);
    const holds = (byte: number) => start <= byte && byte <= end;
    count++;
    if (holds(100 + QEMU_PERM_WRITE)) writer = true;
    if (holds(200 + QEMU_PERM_WRITE)) writeUnshared = true;
  }
  return count > 0 ? { writer, writeUnshared, count } : undefined;
}

const O_ACCMODE = 3;

/**
 * Other processes that have this file open for writing (from /proc/<pid>/fd and fdinfo): a VM
 * started with locking=off, a second vdiskfs mount of the same folder, dd into the image itself.
 * Linux only; processes we may not inspect are skipped.
 */
export async function otherWriters(file: string): Promise<number[]> {
  const st = await fs.stat(file);
  const pids = (await fs.readdir('/proc').catch(() => [] as string[])).filter((d) => /^\d+$/.test(d) && Number(d) !== process.pid);
  const found: number[] = [];
  await Promise.all(
    pids.map(async (pid) => {
      const fdDir = `/proc/${pid}/fd`;
      const fds = await fs.readdir(fdDir).catch(() => [] as string[]);
      for (const fd of fds) {
        const target = await fs.stat(`${fdDir}/${fd}`).catch(() => undefined);
        if (!target || target.ino !== st.ino || target.dev !== st.dev) continue;
        const info = await fs.readFile(`/proc/${pid}/fdinfo/${fd}`, 'utf8').catch(() => '');
        const flags = /^flags:\s*([0-7]+)/m.exec(info);
        if (flags && (parseInt(flags[1]!, 8) & O_ACCMODE) !== 0) {
          found.push(Number(pid));
          return;
        }
      }
    }),
  );
  return found.sort((a, b) => a - b);
}
