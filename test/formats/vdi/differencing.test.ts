/**
 * Differencing VDIs (VirtualBox snapshots; QEMU reads none): a child made by vdiskfs links its
 * parent by UUID, found among the .vdi files beside it or one folder up (VirtualBox's
 * `Snapshots/`), and reads as the parent overlaid with its writes, parent untouched; a discard
 * over the parent's data reads zeros (the zero-block marker). No parent with that UUID: one line.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Confinement } from '../../../src/image/confine';
import { openImage } from '../../../src/image/open';
import { vdiDriver } from '../../../src/formats/vdi';
import { readAll, tmpDir } from '../../helpers/image-io';
import { qemuImg, qemuIo, sha256File } from '../../helpers/qemu';

const dir = tmpDir('vdi-diff');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

async function makeChild(child: string, parent: string): Promise<void> {
  await vdiDriver.create!(child, {
    size: 0,
    options: {},
    backingFile: parent,
    backingFormat: 'vdi',
    openBacking: () => Promise.reject(new Error('not used')),
    reach: (name) => Promise.resolve(path.resolve(path.dirname(child), name)),
  });
}

describe('differencing VDI', () => {
  it('a snapshot in Snapshots/ finds its parent by UUID and reads as parent + writes; parent untouched', async () => {
    const parent = path.join(dir, 'base.vdi');
    qemuImg(['create', '-q', '-f', 'vdi', parent, '6M']);
    qemuIo(parent, ['write -P 0x41 0 4M', 'write -P 0x42 4M 1M'], 'vdi');
    fs.mkdirSync(path.join(dir, 'Snapshots'));
    const child = path.join(dir, 'Snapshots', '{5c7d0e2a-0000-4000-8000-000000000001}.vdi');
    await makeChild(child, '../base.vdi');
    const parentSha = sha256File(parent);
    const expected = Buffer.alloc(6 * MiB);
    expected.fill(0x41, 0, 4 * MiB);
    expected.fill(0x42, 4 * MiB, 5 * MiB);
    // As a mount of the VM's folder sees it: Snapshots/ and the base disk inside one confinement.
    const confinement = await Confinement.create(dir, []);
    await expect(openImage(child, { writable: false })).rejects.toThrow(/not found/); // confined to Snapshots/ alone
    const img = await openImage(child, { writable: true, confinement });
    try {
      expect(img.format).toBe('vdi');
      expect(img.backingImage?.()?.path).toBe(fs.realpathSync(parent));
      for (const [off, len, v] of [
        [4096, 4096, 0x61],
        [MiB - 100, 200, 0x62],
        [5 * MiB, MiB, 0x63],
      ] as const) {
        await img.write(off, Buffer.alloc(len, v));
        expected.fill(v, off, off + len);
      }
      await img.discard(4 * MiB, MiB); // a whole block over the parent's data: the zero marker
      expected.fill(0, 4 * MiB, 5 * MiB);
      await img.discard(2 * MiB + 4096, 8192); // part of a block over the parent: zeros stored
      expected.fill(0, 2 * MiB + 4096, 2 * MiB + 3 * 4096);
      expect((await readAll(img)).equals(expected)).toBe(true);
    } finally {
      await img.close();
    }
    expect(sha256File(parent)).toBe(parentSha);
    const again = await openImage(child, { writable: false, confinement });
    try {
      expect((await readAll(again)).equals(expected)).toBe(true);
      const map = await again.map(0, again.virtualSize);
      expect(map.find((x) => x.offset === 4 * MiB)?.kind).toBe('zero');
      expect(map.some((x) => x.kind === 'backing')).toBe(true);
    } finally {
      await again.close();
    }
  });

  it('no .vdi beside it carries the parent UUID: left out in one line', async () => {
    const parent = path.join(dir, 'gone.vdi');
    qemuImg(['create', '-q', '-f', 'vdi', parent, '2M']);
    const child = path.join(dir, 'orphan.vdi');
    await makeChild(child, 'gone.vdi');
    fs.rmSync(parent);
    qemuImg(['create', '-q', '-f', 'vdi', parent, '2M']); // same name, new UUID: not the parent
    const err = await openImage(child, { writable: false }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).toMatch(/parent VDI \{[0-9a-f-]{36}\} not found/);
    expect(err?.message.split('\n')).toHaveLength(1);
  });
});
