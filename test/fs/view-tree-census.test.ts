/**
 * The census a background mount prints (`N images shown, M left out`), counted by the daemon in
 * its own view tree: every folder, each disk view once (snapshot and partition views are not
 * images of their own), each broken image file once, and a VMDK's extent files not at all.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { Confinement } from '../../src/image';
import { ViewTree } from '../../src/fs/view-tree';
import type { Partition } from '../../src/image/partition-table';
import { tmpDir } from '../helpers/image-io';

const dir = tmpDir('view-tree-census');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

it('counts disk views in every folder, and broken image files, once each', async () => {
  const img = (...p: string[]) => path.join(dir, ...p);
  fs.mkdirSync(img('sub', 'deeper'), { recursive: true });
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', img('a.qcow2'), '16M']);
  execFileSync('qemu-img', ['snapshot', '-c', 'before', img('a.qcow2')]);
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', img('sub', 'split.vmdk'), '3G']);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', img('sub', 'deeper', 'c.qcow2'), '16M']);
  fs.writeFileSync(img('broken.qcow2'), 'not an image');
  fs.writeFileSync(img('sub', 'deeper', 'broken.vmdk'), 'not a vmdk either');
  fs.writeFileSync(img('notes.txt'), 'not an image name: neither shown nor left out');
  const warned: string[] = [];
  const tree = new ViewTree(dir, {
    includeRaw: false,
    warn: (m) => warned.push(m),
    isOpen: () => false,
    confinement: await Confinement.create(dir),
    // a.qcow2 has two partitions: their files are shown beside it, but they are not images
    partitionsOf: async (v) =>
      v.hostPath.endsWith('a.qcow2')
        ? [1, 2].map((number): Partition => ({ number, offset: number * 2 ** 20, size: 2 ** 20, scheme: 'mbr', type: '83' }))
        : [],
  });

  expect((await tree.list('/')).map((e) => e.name).sort()).toEqual([
    'a.qcow2.p1.raw',
    'a.qcow2.p2.raw',
    'a.qcow2.raw',
    'a.qcow2@before.p1.raw',
    'a.qcow2@before.p2.raw',
    'a.qcow2@before.raw',
    'sub',
  ]);
  expect(fs.readdirSync(img('sub')).filter((f) => f.endsWith('.vmdk')).length).toBeGreaterThan(1); // the extents are there
  expect(await tree.census()).toEqual({ shown: 3, leftOut: 2 });
  expect(warned.sort()).toEqual([
    expect.stringMatching(/^left out broken\.qcow2: /),
    expect.stringMatching(/^left out sub\/deeper\/broken\.vmdk: /),
  ]);
  // Counted again (a second mount's summary, nothing changed): the same, and nothing logged twice.
  expect(await tree.census()).toEqual({ shown: 3, leftOut: 2 });
  expect(warned).toHaveLength(2);
});
