/**
 * Power cuts at any moment (test/helpers/crash-states.ts) for VDI: concurrent writers (overlapping
 * allocating writes, partial blocks, zero writes, discards) and flushes racing them; every crash
 * state must be one QEMU accepts (`qemu-img check` clean ) and
 * read back through vdiskfs what flush() acknowledged.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { checkCrashStates, concurrentStorm, CrashRecorder } from '../../helpers/crash-states';
import { qemuImg, qemuIo } from '../../helpers/qemu';
import { tmpDir } from '../vmdk/helpers';

const dir = tmpDir('vdi-crash');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const UNIT = 1 << 20; // the block size

describe('vdi crash states: any subset of unsynced writes', () => {
  for (const seed of [1, 2]) {
    it(`seed ${seed}: every state is one QEMU accepts and keeps what flush() acknowledged`, async () => {
      const f = path.join(dir, `${seed}.vdi`);
      qemuImg(['create', '-q', '-f', 'vdi', f, '32M']);
      qemuIo(f, ['write -P 0x31 0 1M'], 'vdi');
      const probe = await openImage(f, { writable: false });
      const initial = Buffer.alloc(probe.virtualSize);
      await probe.read(0, initial);
      await probe.close();

      const rec = new CrashRecorder(f);
      try {
        const img = await openImage(f, { writable: true });
        await concurrentStorm(img, rec, 500 + seed, 4, 10, UNIT / 4);
        await rec.guestFlush(() => img.flush());
        await concurrentStorm(img, rec, 600 + seed, 3, 8, UNIT / 4);
        await img.close();
      } finally {
        rec.stop();
      }
      expect(rec.barriers.length).toBeGreaterThan(5);
      expect(rec.writes.filter((w) => w.kind === 'write' && w.tag === 'bat').length).toBeGreaterThan(2);
      const states = rec.states({ seed, perEpoch: 12, allSubsetsUpTo: 6 });
      const res = await checkCrashStates(rec, states, {
        file: path.join(dir, `${seed}-state.vdi`),
        format: 'vdi',
        initial,
        budget: 80,
        seed,
      });
      expect(res.states).toBeGreaterThan(30);
      expect(res.bad).toEqual([]);
    });
  }
});
