import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Confinement } from '../../src/image/confine';
import { VdiskError } from '../../src/io/errors';

/**
 * The confinement rule on its own: what an image may name. The folder layout:
 *   top/images/a.qcow2 (the image naming things), images/base.qcow2, images/sub/deep.qcow2,
 *   images/fifo, images/dir/, images/out-link -> ../outside/secret, images/in-link -> base.qcow2
 *   top/outside/secret, top/shared/base.qcow2 (a door), top/link-to-images -> images
 */
let top: string;
let images: string;
let image: string;

beforeAll(() => {
  top = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-confine-')));
  images = path.join(top, 'images');
  for (const d of ['images/sub', 'images/dir', 'outside', 'shared']) fs.mkdirSync(path.join(top, d), { recursive: true });
  for (const f of ['images/a.qcow2', 'images/base.qcow2', 'images/sub/deep.qcow2', 'outside/secret', 'shared/base.qcow2'])
    fs.writeFileSync(path.join(top, f), 'x');
  execFileSync('mkfifo', [path.join(images, 'fifo')]);
  fs.symlinkSync('../outside/secret', path.join(images, 'out-link'));
  fs.symlinkSync('base.qcow2', path.join(images, 'in-link'));
  fs.symlinkSync(path.join(top, 'outside'), path.join(images, 'out-dir'));
  fs.symlinkSync('loop2', path.join(images, 'loop1'));
  fs.symlinkSync('loop1', path.join(images, 'loop2'));
  fs.symlinkSync(images, path.join(top, 'link-to-images'));
  execFileSync('mknod', [path.join(top, 'shared', 'blk'), 'b', '7', '0']);
  execFileSync('mknod', [path.join(images, 'blk'), 'b', '7', '0']);
  image = path.join(images, 'a.qcow2');
});

afterAll(() => fs.rmSync(top, { recursive: true, force: true }));

async function refusal(c: Confinement, name: string): Promise<VdiskError> {
  const e = await c.reach(image, name, 'backing file').then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e, `${name} should be refused`).toBeInstanceOf(VdiskError);
  const err = e as VdiskError;
  // One line that names the image and the field.
  expect(err.message).not.toMatch(/\n/);
  expect(err.message).toContain(image);
  expect(err.message).toContain('backing file');
  return err;
}

describe('Confinement.reach', () => {
  it('resolves relative and absolute names inside the folder to real paths', async () => {
    const c = await Confinement.create(images);
    expect(await c.reach(image, 'base.qcow2', 'backing file')).toBe(path.join(images, 'base.qcow2'));
    expect(await c.reach(image, 'sub/deep.qcow2', 'backing file')).toBe(path.join(images, 'sub/deep.qcow2'));
    expect(await c.reach(image, path.join(images, 'base.qcow2'), 'backing file')).toBe(path.join(images, 'base.qcow2'));
    expect(await c.reach(image, `file:${path.join(images, 'base.qcow2')}`, 'backing file')).toBe(path.join(images, 'base.qcow2'));
    expect(await c.reach(image, 'sub/../base.qcow2', 'backing file')).toBe(path.join(images, 'base.qcow2'));
  });

  it('follows symlinks that stay inside', async () => {
    const c = await Confinement.create(images);
    expect(await c.reach(image, 'in-link', 'backing file')).toBe(path.join(images, 'base.qcow2'));
  });

  it('refuses names that leave the folder: ../, absolute, symlinks out, /proc, /dev, /etc', async () => {
    const c = await Confinement.create(images);
    for (const name of [
      '../outside/secret',
      path.join(top, 'outside/secret'),
      'out-link',
      'out-dir/secret',
      '/proc/self/mem',
      '/dev/zero',
      '/etc/shadow',
      'file:/etc/shadow',
    ]) {
      const e = await refusal(c, name);
      expect(e.code).toBe('EACCES');
      expect(e.message).toMatch(/outside .*--allow-outside/);
    }
  });

  it('refuses what is not a regular file, without opening it', async () => {
    const c = await Confinement.create(images);
    expect((await refusal(c, 'fifo')).message).toMatch(/a FIFO, not a regular file/);
    expect((await refusal(c, 'dir')).message).toMatch(/folder/);
    expect((await refusal(c, 'blk')).message).toMatch(/block device.*--allow-outside/);
    expect((await refusal(c, 'loop1')).message).toMatch(/too many symlinks/);
  });

  it('says what is wrong with broken names in one line', async () => {
    const c = await Confinement.create(images);
    expect((await refusal(c, 'missing')).code).toBe('ENOENT');
    expect((await refusal(c, 'missing')).message).toMatch(/does not exist/);
    expect((await refusal(c, 'base\0.qcow2')).message).toMatch(/NUL byte/);
    expect((await refusal(c, 'base.qcow2/x')).message).toMatch(/not a folder/);
    expect((await refusal(c, 'nbd:localhost')).message).toMatch(/protocol/);
    expect((await refusal(c, 'x'.repeat(5000))).message).toMatch(/longer/);
    expect((await refusal(c, '')).message).toMatch(/empty/);
  });

  it('opens a door with --allow-outside, and block devices only through it', async () => {
    const c = await Confinement.create(images, [path.join(top, 'shared')]);
    expect(await c.reach(image, '../shared/base.qcow2', 'backing file')).toBe(path.join(top, 'shared/base.qcow2'));
    expect(await c.reach(image, path.join(top, 'shared/blk'), 'extent')).toBe(path.join(top, 'shared/blk'));
    await refusal(c, '../outside/secret');
    await refusal(c, 'blk');
  });

  it("takes absolute names written through the folder's symlinked name as the real folder", async () => {
    const viaLink = path.join(top, 'link-to-images');
    const c = await Confinement.create(viaLink);
    expect(c.roots).toEqual([images]);
    expect(await c.reach(image, path.join(viaLink, 'base.qcow2'), 'backing file')).toBe(path.join(images, 'base.qcow2'));
  });

  it('forFile roots one image in its own real folder', async () => {
    const { confinement, file } = await Confinement.forFile(path.join(top, 'link-to-images', 'a.qcow2'));
    expect(file).toBe(image);
    expect(confinement.roots).toEqual([images]);
    await expect(Confinement.forFile(path.join(images, 'nope.qcow2'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
