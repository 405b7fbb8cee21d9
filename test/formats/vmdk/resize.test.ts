/**
 * A monolithicSparse VMDK grows within its grain directory (fallocate/truncate past the end of a
 * view); beyond it, and for other layouts, ENOSPC. qemu-img sees the new size, checks it clean and
 * reads the old data and the new zeros.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { qemuCheck, qemuImg, qemuIo } from '../../helpers/qemu';
import { tmpDir } from './helpers';

const dir = tmpDir('resize');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

describe('vmdk resize', () => {
  it('monolithicSparse: grows up to its grain directory, then ENOSPC', async () => {
    const f = path.join(dir, 'm.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', f, '48M']); // 64 KiB grains, 512-entry tables: the directory reaches 64 MiB
    qemuIo(f, ['write -P 0x31 47M 1M']);
    const img = await openImage(f, { writable: true });
    await img.resize!(60 * MiB + 512);
    expect(img.virtualSize).toBe(60 * MiB + 512);
    const tail = Buffer.alloc(MiB);
    tail.fill(0x32);
    await img.write(59 * MiB, tail);
    await expect(img.resize!(96 * MiB)).rejects.toMatchObject({ code: 'ENOSPC' });
    await img.close();
    expect(JSON.parse(qemuImg(['info', '--output=json', f]))['virtual-size']).toBe(60 * MiB + 512);
    const check = qemuCheck(f, 'vmdk');
    expect(check.ok, check.output).toBe(true);
    expect(qemuIo(f, ['read -P 0x31 47M 1M', 'read -P 0 48M 11M', 'read -P 0x32 59M 1M'])).not.toMatch(/fail|mismatch/i);
  });

  it('split and streamOptimized VMDKs do not grow (ENOSPC)', async () => {
    const split = path.join(dir, 's.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', split, '16M']);
    const img = await openImage(split, { writable: true });
    await expect(img.resize!(20 * MiB)).rejects.toMatchObject({ code: 'ENOSPC' });
    await img.close();
  });
});
