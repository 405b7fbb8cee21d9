/**
 * What a listing's probe learns of a qcow2 (data file, snapshots, backing file) is the same
 * whether it comes from the 4 KiB the probe read (no second open) or from the file itself.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQcow2 } from '../../../src/formats/qcow2/driver-impl';
import { readHead } from '../../../src/image';
import { tmpDir } from '../../helpers/image-io';

const dir = tmpDir('qcow2-describe');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const qemuImg = (...a: string[]) => execFileSync('qemu-img', a, { cwd: dir, stdio: 'pipe' });

it('the quick description from the head equals the one read from the file', async () => {
  qemuImg('create', '-q', '-f', 'raw', 'base.raw', '1M');
  qemuImg('create', '-q', '-f', 'qcow2', 'plain.qcow2', '1M');
  qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'overlay.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-o', 'data_file=data.bin', 'external.qcow2', '1M');
  qemuImg('create', '-q', '-f', 'qcow2', 'snapped.qcow2', '1M');
  qemuImg('snapshot', '-c', 'one', 'snapped.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'v2.qcow2', '1M');
  const expected: Record<string, object> = {
    'plain.qcow2': { auxiliaryFiles: [], snapshots: [] },
    'overlay.qcow2': { auxiliaryFiles: [], snapshots: [], backingFile: path.join(dir, 'base.raw') },
    'external.qcow2': { auxiliaryFiles: [path.join(dir, 'data.bin')], snapshots: [] },
    'snapped.qcow2': { auxiliaryFiles: [], snapshots: ['one'] },
    'v2.qcow2': { auxiliaryFiles: [], snapshots: [] },
  };
  for (const [name, description] of Object.entries(expected)) {
    const file = path.join(dir, name);
    const head = await readHead(file);
    expect(head.length, name).toBe(4096);
    expect(await describeQcow2(file, head), name).toEqual(description);
    expect(await describeQcow2(file, head.subarray(0, 512)), `${name}, read from the file`).toEqual(description);
  }
});
