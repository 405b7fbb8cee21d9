/**
 * Mounts as the kernel lists them (/proc/self/mountinfo), and unmounting with whichever tool
 * exists: shared by both transports, the mount and `vdiskfs unmount`.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { VdiskError } from '../io/errors';

/** Is `dir` a mountpoint right now (per /proc/self/mountinfo)? */
export function isMounted(dir: string): boolean {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  const target = escapeMountPath(dir);
  return text.split('\n').some((line) => line.split(' ')[4] === target);
}

export function isOurMount(dir: string): boolean {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  const target = escapeMountPath(dir);
  return text.split('\n').some((line) => {
    const f = line.split(' ');
    return f[4] === target && line.includes(' - fuse.vdiskfs ');
  });
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function escapeMountPath(p: string): string {
  return p.replace(/[\\ \t\n]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'));
}

/**
 * Unmounts with the first tool that exists: umount (root), fusermount3, fusermount. A busy mount
 * is retried for a moment: `losetup -d` releases its file asynchronously, so an unmount right
 * after it would otherwise fail for no lasting reason.
 */
export async function unmountPath(dir: string, lazy: boolean): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await unmountOnce(dir, lazy);
    } catch (e) {
      if (attempt >= 20 || !/busy/i.test((e as Error).message)) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function unmountOnce(dir: string, lazy: boolean): Promise<void> {
  const attempts: Array<[string, string[]]> = [
    ['umount', [...(lazy ? ['-l'] : []), dir]],
    ['fusermount3', ['-u', ...(lazy ? ['-z'] : []), dir]],
    ['fusermount', ['-u', ...(lazy ? ['-z'] : []), dir]],
  ];
  let last = '';
  for (const [cmd, args] of attempts) {
    const r = await new Promise<{ ok: boolean; msg: string; missing: boolean }>((res) =>
      execFile(cmd, args, (err, _out, stderr) =>
        res({
          ok: !err,
          msg: String(stderr || err?.message || '').trim(),
          missing: (err as NodeJS.ErrnoException | null)?.code === 'ENOENT',
        }),
      ),
    );
    if (r.ok) return;
    if (!r.missing) last = r.msg;
    if (!isMounted(dir)) return;
    if (!r.missing && /busy/i.test(r.msg)) break;
  }
  if (isMounted(dir)) throw new VdiskError('EBUSY', `cannot unmount ${dir}: ${last || 'unknown reason'}`);
}
