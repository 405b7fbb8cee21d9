/**
 * libvhdi's vhdimount, the second reader of VHD and VHDX (differencing chains included): mounts an
 * image read-only, hands back the top of the chain's bytes, and always unmounts.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export function vhdiRead(image: string, scratch: string): Buffer {
  const mnt = fs.mkdtempSync(path.join(scratch, 'vhdimount-'));
  execFileSync('vhdimount', [image, mnt], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    // One file per layer of the chain, vhdi1 the bottom: the last one is the image's own view.
    const layers = fs.readdirSync(mnt).filter((n) => /^vhdi\d+$/.test(n));
    layers.sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
    return fs.readFileSync(path.join(mnt, layers[layers.length - 1]!));
  } finally {
    execFileSync('fusermount', ['-u', mnt]);
    fs.rmdirSync(mnt);
  }
}
