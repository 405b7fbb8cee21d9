import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, expect, it, vi } from 'vitest';
import { ViewTree } from '../../src/fs/view-tree';
import { Confinement } from '../../src/image/confine';

/**
 * Found by review: isBackingOfAnother() ran realpathSync (on the main thread) on the backing
 * name a hostile image's header carries, outside the folder too: a lookup on a hung NFS/FUSE
 * mount there froze the daemon. The name now goes only through the confinement (reach).
 */
const top = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-review-rp-')));
afterAll(() => fs.rmSync(top, { recursive: true, force: true }));

it('never resolves a hostile backing name outside the folder', async () => {
  const images = path.join(top, 'images');
  const outside = path.join(top, 'outside');
  fs.mkdirSync(images);
  fs.mkdirSync(path.join(outside, 'deep'), { recursive: true });
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(images, 'base.qcow2'), '1M']);
  execFileSync('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-u',
    '-b',
    path.join(outside, 'deep', 'x'),
    '-F',
    'raw',
    path.join(images, 'evil.qcow2'),
    '1M',
  ]);

  const confinement = await Confinement.create(images);
  const tree = new ViewTree(images, { includeRaw: false, warn: () => {}, isOpen: () => false, confinement });
  const looked: string[] = [];
  const orig = fs.realpathSync.native;
  const spy = vi.spyOn(fs.realpathSync, 'native').mockImplementation((p: fs.PathLike, o?: unknown) => {
    looked.push(String(p));
    return (orig as (p: fs.PathLike, o?: unknown) => string)(p, o);
  });
  try {
    await tree.isBackingOfAnother(path.join(images, 'base.qcow2'));
  } finally {
    spy.mockRestore();
  }
  expect(looked.filter((p) => !p.startsWith(images + path.sep))).toEqual([]);
});
