import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { Confinement } from '../../../src/image/confine';
import { openImage } from '../../../src/image/open';

/**
 * Found by review: a VMDK descriptor (up to 1 MiB) may list tens of thousands of extent lines,
 * each opening its own file descriptor: one stranger's image exhausted the daemon's descriptors
 * (EMFILE for every other image and request meanwhile). Now refused past MAX_EXTENTS, one line.
 */
const top = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-vmdk-extents-')));
afterAll(() => fs.rmSync(top, { recursive: true, force: true }));

it('a descriptor with 30000 extent lines does not use one fd per line', async () => {
  fs.writeFileSync(path.join(top, 'f.raw'), Buffer.alloc(512));
  const n = 30000;
  const text =
    '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n# Extent description\n' +
    'RW 1 FLAT "f.raw" 0\n'.repeat(n) +
    '\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n';
  const file = path.join(top, 'many.vmdk');
  fs.writeFileSync(file, text);
  const confinement = await Confinement.create(top);
  let peak = 0;
  const r = await openImage(file, { writable: false, confinement }).then(
    async (img) => {
      peak = Math.max(peak, fs.readdirSync('/proc/self/fd').length);
      await img.close();
      return 'opened';
    },
    (e: Error) => e.message,
  );
  expect(r).not.toMatch(/too many open files|EMFILE/i);
  expect(r).toMatch(/30000 extents; vdiskfs opens at most 4096/);
  expect(peak).toBeLessThan(1000);
}, 120_000);
