/**
 * The view tree at scale (#20): a listing probes each image once; lookups afterwards stat the
 * folder and the one file, never list the folder again unless it changed; a changed file is
 * probed again alone (a snapshot taken shows its view on a direct lookup); added and removed
 * images show on the next lookup. Counted through the probe's partition-table callback (one call
 * per view probed) and a spy on list(), not timed.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import { Confinement } from '../../src/image';
import { ViewTree } from '../../src/fs/view-tree';
import { tmpDir } from '../helpers/image-io';

const COUNT = 300;
let dir: string;
let tree: ViewTree;
let probed = 0;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  dir = tmpDir('view-tree');
  const one = path.join(dir, '..', `${path.basename(dir)}-one.qcow2`);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', one, '64M']);
  for (let i = 0; i < COUNT; i++) fs.copyFileSync(one, path.join(dir, `d${i}.qcow2`));
  fs.rmSync(one);
  fs.writeFileSync(path.join(dir, 'broken.qcow2'), 'not an image');
  await sleep(200); // a folder changed within the coarse clock's tick of its listing is listed again (MTIME_SETTLED_MS)
  tree = new ViewTree(dir, {
    includeRaw: false,
    warn: () => undefined,
    isOpen: () => false,
    confinement: await Confinement.create(dir),
    partitionsOf: async () => [],
    readPartitions: async () => void probed++,
  });
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

it('lists every image once; a broken one is left out', async () => {
  const names = (await tree.list('/')).map((e) => e.name);
  expect(names).toHaveLength(COUNT);
  expect(names).toContain('d7.qcow2.raw');
  expect(names).not.toContain('broken.qcow2.raw');
  expect(probed).toBe(COUNT);
});

it('a lookup after the listing expired stats, it does not list or probe again', async () => {
  await sleep(1100); // past the listing's TTL: the folder's mtime is what keeps it
  const list = vi.spyOn(tree, 'list');
  const before = probed;
  for (let i = 0; i < COUNT; i += 7) expect((await tree.resolve(`/d${i}.qcow2.raw`))?.kind).toBe('image');
  expect(await tree.resolve('/nope.qcow2.raw')).toBeUndefined();
  expect(list).not.toHaveBeenCalled();
  expect(probed).toBe(before);
  list.mockRestore();
});

it('a snapshot taken outside shows on a direct lookup: that file alone probed again', async () => {
  execFileSync('qemu-img', ['snapshot', '-c', 'before-upgrade', path.join(dir, 'd5.qcow2')]);
  const list = vi.spyOn(tree, 'list');
  const before = probed;
  const snap = await tree.resolve('/d5.qcow2@before-upgrade.raw');
  expect(snap).toMatchObject({ kind: 'image', snapshot: 'before-upgrade' });
  expect(probed - before).toBe(2); // the active layer and the snapshot, nothing else
  expect(list).not.toHaveBeenCalled();
  list.mockRestore();
});

it('an image added or removed shows on the next lookup once the listing expired', async () => {
  await sleep(1100);
  fs.copyFileSync(path.join(dir, 'd1.qcow2'), path.join(dir, 'added.qcow2'));
  fs.rmSync(path.join(dir, 'd2.qcow2'));
  expect((await tree.resolve('/added.qcow2.raw'))?.kind).toBe('image');
  expect(await tree.resolve('/d2.qcow2.raw')).toBeUndefined();
});
