/**
 * Loop devices on a raw view. `losetup -P` is tried first; where the kernel gives no partition
 * device (some sandboxes: "Can't lookup blockdev"), partition 1 gets a loop device of its own
 * at its offset instead — the same bytes, reached the same way through the view.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';

export interface Partition {
  device: string;
  /** Every loop device made, to detach afterwards (newest first). */
  loops: string[];
}

export async function attachFirstPartition(file: string, readOnly = false): Promise<Partition> {
  const ro = readOnly ? ['-r'] : [];
  const whole = execFileSync('losetup', ['-P', '--show', '-f', ...ro, file], { encoding: 'utf8' }).trim();
  for (let i = 0; i < 20; i++) {
    if (fs.existsSync(`${whole}p1`)) return { device: `${whole}p1`, loops: [whole] };
    await new Promise((r) => setTimeout(r, 100));
  }
  const dump = execFileSync('sfdisk', ['-d', file], { encoding: 'utf8' });
  const m = /start=\s*(\d+),\s*size=\s*(\d+)/.exec(dump);
  if (!m) throw new Error(`no partition table on ${file}`);
  const part = execFileSync(
    'losetup',
    ['--show', '-f', ...ro, '-o', String(Number(m[1]) * 512), '--sizelimit', String(Number(m[2]) * 512), file],
    { encoding: 'utf8' },
  ).trim();
  return { device: part, loops: [part, whole] };
}

export function detach(loops: string[]): void {
  for (const l of loops) {
    try {
      execFileSync('losetup', ['-d', l], { stdio: 'ignore' });
    } catch {
      /* already gone */
    }
  }
}
