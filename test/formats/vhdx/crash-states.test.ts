/**
 * Power cuts at any moment for a dynamic VHDX (see test/helpers/crash-states.ts): block data
 * before the log entry that points the BAT at it, the log entry before the BAT in place, the BAT
 * before the header says the log is empty. Concurrent allocating writes, zero writes, discards
 * and flushes; every crash state must pass `qemu-img check` (after the `-r all` log replay QEMU
 * needs for a dirty log) and read back through our driver (log replayed in memory) what flush()
 * acknowledged.
 */
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { checkCrashStates, concurrentStorm, CrashRecorder, faultyStorm } from '../../helpers/crash-states';
import { qemuCheck, qemuImg, qemuIo } from '../../helpers/qemu';
import { rmrf, tmpDir } from './helpers';

const dir = tmpDir('crash-states');
afterAll(() => rmrf(dir));
const MiB = 1 << 20;

const variants = [
  { name: 'dynamic, block 1M, ZERO blocks', opts: 'block_size=1M', seed: 1 },
  { name: 'dynamic, block 1M, NOT_PRESENT blocks', opts: 'block_size=1M,block_state_zero=off', seed: 2 },
  { name: 'dynamic, block 2M, ZERO blocks, other seed', opts: 'block_size=2M', seed: 3 },
  // Image.writeSync among the writers (the synchronous fast path, where the driver offers one).
  { name: 'dynamic, block 1M, synchronous writes', opts: 'block_size=1M', seed: 4, trySync: true },
];

describe('vhdx crash states: any subset of unsynced writes', () => {
  for (const v of variants) {
    it(`${v.name}: every state passes qemu-img check and keeps what flush() acknowledged`, async () => {
      const f = path.join(dir, `${v.seed}.vhdx`);
      qemuImg(['create', '-q', '-f', 'vhdx', '-o', v.opts, f, '8M']);
      qemuIo(f, ['write -P 0x31 0 1M'], 'vhdx');
      const initial = Buffer.alloc(8 * MiB);
      initial.fill(0x31, 0, MiB);

      const rec = new CrashRecorder(f);
      let syncWrites = 0;
      try {
        const img = await openImage(f, { writable: true });
        syncWrites += (await concurrentStorm(img, rec, 300 + v.seed, 4, 10, 256 * 1024, { trySync: v.trySync })).syncWrites;
        await rec.guestFlush(() => img.flush());
        syncWrites += (await concurrentStorm(img, rec, 400 + v.seed, 3, 8, 256 * 1024, { trySync: v.trySync })).syncWrites;
        await img.close();
      } finally {
        rec.stop();
      }
      if (v.trySync) expect(syncWrites).toBeGreaterThan(3);
      expect(rec.barriers.length).toBeGreaterThan(5);
      expect(rec.writes.filter((w) => w.kind === 'write').length).toBeGreaterThan(30);
      const states = rec.states({ seed: v.seed, perEpoch: 10, allSubsetsUpTo: 5 });
      const res = await checkCrashStates(rec, states, {
        file: path.join(dir, `${v.seed}-state.vhdx`),
        format: 'vhdx',
        initial,
        budget: 70,
        seed: v.seed,
      });
      expect(res.states).toBeGreaterThan(30);
      expect(res.bad).toEqual([]);
      const final = qemuCheck(f, 'vhdx');
      expect(final.ok, final.output).toBe(true);
    }, 300_000);
  }

  it('dynamic, block 1M, host writes failing at random: every state passes qemu-img check and keeps what flush() acknowledged', async () => {
    const f = path.join(dir, 'faults.vhdx');
    qemuImg(['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', f, '8M']);
    qemuIo(f, ['write -P 0x31 0 1M'], 'vhdx');
    const initial = Buffer.alloc(8 * MiB);
    initial.fill(0x31, 0, MiB);
    const rec = new CrashRecorder(f);
    let failedWrites = 0;
    try {
      const img = await openImage(f, { writable: true });
      failedWrites = await faultyStorm(img, rec, {
        seed: 990,
        rounds: 2,
        writers: 3,
        ops: 10,
        unit: 256 * 1024,
        trySync: true,
        faults: { rate: 0.1, byTag: { log: 0.2, header: 0.3, bat: 0.2, metadata: 0.3 }, seed: 990 },
      });
      await img.close();
    } finally {
      rec.stop();
    }
    expect(rec.injected).toBeGreaterThan(3);
    expect(failedWrites).toBeGreaterThan(1);
    const states = rec.states({ seed: 9, perEpoch: 10, allSubsetsUpTo: 5 });
    const res = await checkCrashStates(rec, states, {
      file: path.join(dir, 'faults-state.vhdx'),
      format: 'vhdx',
      initial,
      budget: 60,
      seed: 9,
    });
    expect(res.states).toBeGreaterThan(20);
    expect(res.bad).toEqual([]);
    const final = qemuCheck(f, 'vhdx');
    expect(Number(final.json?.['corruptions'] ?? 0) + Number(final.json?.['check-errors'] ?? 0), final.output).toBe(0);
  }, 300_000);
});
