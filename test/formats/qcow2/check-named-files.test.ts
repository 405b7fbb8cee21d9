/**
 * check() opens what the image names first, as `qemu-img check` does, under the confinement
 * rule: a backing file or data file outside the folder, a FIFO, a loop or a missing file fails
 * the check with one line; a chain inside the folder is checked as usual.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { qcow2Driver } from '../../../src/formats/qcow2';
import { Confinement, driverOptions } from '../../../src/image';
import { qemuImg } from '../../helpers/qemu';
import { tempDir } from './helpers';

const dir = tempDir('check-named');
const images = path.join(dir, 'images');
fs.mkdirSync(images);
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

async function check(name: string) {
  const file = path.join(images, name);
  const opts = driverOptions(file, { writable: false, warn: () => undefined, confinement: await Confinement.create(images) });
  return qcow2Driver.check!(file, { ...opts, repair: false });
}

describe('qcow2 check opens the chain first, confined', () => {
  it('a chain inside the folder is checked as usual', async () => {
    qemuImg(['create', '-q', '-f', 'qcow2', path.join(images, 'base.qcow2'), '1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', path.join(images, 'top.qcow2')]);
    expect(await check('top.qcow2')).toMatchObject({ errors: 0, corruptions: 0, leaks: 0 });
  });

  it('refuses a backing file outside, a FIFO, a loop and a missing one, naming the field', async () => {
    fs.writeFileSync(path.join(dir, 'outside.raw'), Buffer.alloc(1 << 20));
    execFileSync('mkfifo', [path.join(images, 'pipe.raw')]);
    const cases: Array<[string, string, RegExp]> = [
      ['out.qcow2', '../outside.raw', /backing file '\.\.\/outside\.raw' is outside/],
      ['fifo.qcow2', 'pipe.raw', /backing file 'pipe\.raw' is a FIFO/],
      ['missing.qcow2', 'nowhere', /backing file 'nowhere' does not exist/],
    ];
    for (const [name, backing, re] of cases) {
      qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-b', backing, '-F', 'raw', path.join(images, name), '1M']);
      await expect(check(name), name).rejects.toThrow(re);
    }
    qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-b', 'loop.qcow2', '-F', 'qcow2', path.join(images, 'loop.qcow2'), '1M']);
    await expect(check('loop.qcow2')).rejects.toMatchObject({ code: 'ECORRUPT' });
  });

  it('refuses an external data file outside the folder', async () => {
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${path.join(dir, 'data.bin')}`, path.join(images, 'data.qcow2'), '1M']);
    await expect(check('data.qcow2')).rejects.toThrow(/data file '.*data\.bin' is outside/);
  });
});
