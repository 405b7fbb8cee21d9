/**
 * Power cuts at any moment for monolithicSparse VMDK (see test/helpers/crash-states.ts): the rule
 * is grain data before its grain-table entry, grain tables before the directory. Concurrent
 * writers (overlapping allocating writes, partial grains, zero writes) and flushes racing them,
 * with a grain-table cache of one table; every crash state must pass `qemu-img check` and read
 * back what flush() acknowledged.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { checkCrashStates, concurrentStorm, CrashRecorder, faultyStorm } from '../../helpers/crash-states';
import { qemuCheck, qemuImg, qemuIo } from '../../helpers/qemu';
import { makeHandSparse, tmpDir } from './helpers';

const dir = tmpDir('crash-states');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

const variants = [
  { name: 'monolithicSparse', opts: [] as string[], seed: 1 },
  { name: 'monolithicSparse, zeroed_grain=on', opts: ['-o', 'zeroed_grain=on'], seed: 2 },
  // Image.writeSync among the writers: grains written in place and allocated in one synchronous step.
  { name: 'monolithicSparse, synchronous writes', opts: [] as string[], seed: 3, trySync: true },
];

describe('vmdk crash states: any subset of unsynced writes', () => {
  for (const v of variants) {
    it(`${v.name}: every state passes qemu-img check and keeps what flush() acknowledged`, async () => {
      const f = path.join(dir, `${v.seed}.vmdk`);
      qemuImg(['create', '-q', '-f', 'vmdk', ...v.opts, f, '4M']);
      qemuIo(f, ['write -P 0x31 0 1M'], 'vmdk');
      const initial = Buffer.alloc(4 * MiB);
      initial.fill(0x31, 0, MiB);

      const rec = new CrashRecorder(f);
      let syncWrites = 0;
      try {
        const img = await openImage(f, { writable: true, tuning: { vmdk: { tableCacheBytes: 2048 } } });
        syncWrites += (await concurrentStorm(img, rec, 300 + v.seed, 4, 10, 65536, { trySync: v.trySync })).syncWrites;
        await rec.guestFlush(() => img.flush());
        syncWrites += (await concurrentStorm(img, rec, 400 + v.seed, 3, 8, 65536, { trySync: v.trySync })).syncWrites;
        await img.close();
      } finally {
        rec.stop();
      }
      if (v.trySync) expect(syncWrites).toBeGreaterThan(3);
      expect(rec.barriers.length).toBeGreaterThan(5);
      expect(rec.writes.filter((w) => w.kind === 'write').length).toBeGreaterThan(30);
      const states = rec.states({ seed: v.seed, perEpoch: 12, allSubsetsUpTo: 6 });
      const res = await checkCrashStates(rec, states, {
        file: path.join(dir, `${v.seed}-state.vmdk`),
        format: 'vmdk',
        initial,
        budget: 80,
        seed: v.seed,
      });
      expect(res.states).toBeGreaterThan(40);
      expect(res.bad).toEqual([]);
      const final = qemuCheck(f, 'vmdk');
      expect(final.ok, final.output).toBe(true);
    });
  }

  const faultVariants = [
    ...variants.filter((x) => x.seed !== 2).map((x) => ({ ...x, smallTables: false })),
    // 16 grains of 4 KiB per table: the storm makes new tables, so the grain directory changes
    // and its writes fail too. (A GD marked clean before its failed write heals at the next GD
    // write, so only a failing last one shows it: failure-paths.test.ts checks that directly.)
    { name: 'small grain tables', opts: [] as string[], seed: 4, trySync: false, smallTables: true },
  ];
  for (const v of faultVariants) {
    it(`${v.name}, host writes failing at random: no state is corrupt, what a flush acknowledged is kept`, async () => {
      const f = path.join(dir, `${v.seed}-faults.vmdk`);
      if (v.smallTables) {
        // QEMU reads such an image but its write to it fails (EINVAL): the first MiB through our driver.
        makeHandSparse(f, { capacitySectors: (4 * MiB) / 512, grainSectors: 8, gtes: 16 });
        const w = await openImage(f, { writable: true });
        await w.write(0, Buffer.alloc(MiB, 0x31));
        await w.close();
      } else {
        qemuImg(['create', '-q', '-f', 'vmdk', ...v.opts, f, '4M']);
        qemuIo(f, ['write -P 0x31 0 1M'], 'vmdk');
      }
      const initial = Buffer.alloc(4 * MiB);
      initial.fill(0x31, 0, MiB);
      const rec = new CrashRecorder(f);
      let failedWrites = 0;
      try {
        const img = await openImage(f, { writable: true, tuning: { vmdk: { tableCacheBytes: 2048 } } });
        failedWrites = await faultyStorm(img, rec, {
          seed: 950 + 10 * v.seed,
          rounds: 3,
          writers: 2,
          ops: 10,
          unit: 65536,
          trySync: v.trySync,
          faults: { rate: 0.04, byTag: { gd: 0.5, header: 0.3, descriptor: 0.3, gt: 0.15 }, seed: 950 + v.seed },
        });
        await img.close();
      } finally {
        rec.stop();
      }
      expect(rec.injected).toBeGreaterThan(3);
      expect(failedWrites).toBeGreaterThan(1);
      const final = qemuCheck(f, 'vmdk');
      expect(Number(final.json?.['corruptions'] ?? 0) + Number(final.json?.['check-errors'] ?? 0), final.output).toBe(0);
      const states = rec.states({ seed: v.seed, perEpoch: 10, allSubsetsUpTo: 5 });
      const res = await checkCrashStates(rec, states, {
        file: path.join(dir, `${v.seed}-faults-state.vmdk`),
        format: 'vmdk',
        initial,
        budget: 70,
        seed: v.seed,
      });
      expect(res.states).toBeGreaterThan(30);
      expect(res.bad).toEqual([]);
    });
  }

  it('two overlapping flushes: the older snapshot of a grain table never lands after the newer one', async () => {
    const f = path.join(dir, 'flushes.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', f, '4M']);
    const rec = new CrashRecorder(f);
    try {
      const img = await openImage(f, { writable: true });
      for (let i = 0; i < 4; i++) {
        const a = Buffer.alloc(65536, 2 * i + 1);
        const b = Buffer.alloc(65536, 2 * i + 2);
        await rec.guestWrite(i * 2 * 65536, a, () => img.write(i * 2 * 65536, a));
        // The first flush's data barrier is held while a second write and flush go through.
        let release!: () => void;
        let held!: () => void;
        const gate = new Promise<void>((r) => (release = r));
        const reached = new Promise<void>((r) => (held = r));
        rec.hold = (kind) => {
          if (kind !== 'sync') return undefined;
          rec.hold = undefined;
          held();
          return gate;
        };
        const first = rec.guestFlush(() => img.flush());
        await reached;
        await rec.guestWrite((i * 2 + 1) * 65536, b, () => img.write((i * 2 + 1) * 65536, b));
        const second = rec.guestFlush(() => img.flush());
        for (let k = 0; k < 20; k++) await new Promise((r) => setImmediate(r)); // let the second flush run as far as it can
        release();
        await Promise.all([first, second]);
      }
      await img.close();
    } finally {
      rec.stop();
    }
    const states = rec.states({ seed: 4, perEpoch: 8, allSubsetsUpTo: 5 });
    const res = await checkCrashStates(rec, states, {
      file: path.join(dir, 'flushes-state.vmdk'),
      format: 'vmdk',
      initial: Buffer.alloc(4 * MiB),
      budget: 80,
      seed: 4,
    });
    expect(res.states).toBeGreaterThan(10);
    expect(res.bad).toEqual([]);
  });
});
