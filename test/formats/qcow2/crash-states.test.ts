/**
 * Power cuts at any moment, with a disk that reorders everything between barriers: concurrent
 * writers (overlapping allocating writes, partial clusters, COW of compressed and snapshot-shared
 * clusters, zero writes) and flushes racing them, through a metadata cache of two tables so
 * eviction writes tables back all the time. Every crash state (durable writes + any subset of the
 * unsynced ones) must pass `qemu-img check` and read back what flush() acknowledged.
 * This is the test that found data → L2 missing its barrier with lazy_refcounts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { checkCrashStates, concurrentStorm, CrashRecorder, faultyStorm } from '../../helpers/crash-states';
import { qemuCheck, qemuImg, qemuIo } from '../../helpers/qemu';
import { tempDir } from './helpers';

const dir = tempDir('crash-states');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const KiB = 1024;
const MiB = 1024 * KiB;

const variants = [
  { name: 'default refcounts', opts: 'cluster_size=4096,refcount_bits=64', seed: 1 },
  { name: 'lazy_refcounts', opts: 'cluster_size=4096,refcount_bits=64,lazy_refcounts=on', seed: 2 },
  // Image.writeSync among them: clusters overwritten in place and allocated in one synchronous step.
  { name: 'default refcounts, synchronous writes', opts: 'cluster_size=4096,refcount_bits=64', seed: 3, trySync: true },
  { name: 'lazy_refcounts, synchronous writes', opts: 'cluster_size=4096,refcount_bits=64,lazy_refcounts=on', seed: 4, trySync: true },
];

describe('qcow2 crash states: any subset of unsynced writes', () => {
  for (const v of variants) {
    it(`${v.name}: every state passes qemu-img check and keeps what flush() acknowledged`, async () => {
      const src = path.join(dir, `${v.seed}-src.qcow2`);
      const f = path.join(dir, `${v.seed}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', v.opts, src, '4M']);
      qemuIo(src, ['write -P 0x31 0 1536k']);
      qemuImg(['convert', '-c', '-O', 'qcow2', '-o', v.opts, src, f]); // compressed clusters: COW + free
      qemuIo(f, ['write -P 0x32 1536k 512k']);
      qemuImg(['snapshot', '-c', 'snap', f]); // shared clusters and tables: COW + free
      const initial = Buffer.alloc(4 * MiB);
      initial.fill(0x31, 0, 1536 * KiB);
      initial.fill(0x32, 1536 * KiB, 2 * MiB);

      const rec = new CrashRecorder(f);
      let syncWrites = 0;
      let allocated = 0;
      try {
        // Two tables' worth of cache: every allocation evicts.
        const img = await openImage(f, { writable: true, tuning: { qcow2: { cacheSize: 2 * 4096 } } });
        const before = img.stats().driver['allocatedClusters'] ?? 0;
        const a = await concurrentStorm(img, rec, 100 + v.seed, 4, 14, 4096, { trySync: v.trySync });
        await rec.guestFlush(() => img.flush());
        const b = await concurrentStorm(img, rec, 200 + v.seed, 3, 8, 4096, { trySync: v.trySync });
        syncWrites = a.syncWrites + b.syncWrites;
        allocated = (img.stats().driver['allocatedClusters'] ?? 0) - before;
        await img.close();
      } finally {
        rec.stop();
      }
      expect(rec.barriers.length).toBeGreaterThan(5);
      expect(rec.writes.filter((w) => w.kind === 'write').length).toBeGreaterThan(50);
      if (v.trySync) expect(syncWrites).toBeGreaterThan(5);
      expect(allocated).toBeGreaterThan(10);
      const states = rec.states({ seed: v.seed, perEpoch: 12, allSubsetsUpTo: 6 });
      const res = await checkCrashStates(rec, states, {
        file: path.join(dir, `${v.seed}-state.qcow2`),
        format: 'qcow2',
        initial,
        budget: 100,
        seed: v.seed,
      });
      expect(res.states).toBeGreaterThan(50);
      expect(res.bad).toEqual([]);
      const final = qemuCheck(f);
      expect(final.ok, final.output).toBe(true);
    });
  }

  for (const v of variants.filter((x) => x.trySync)) {
    it(`${v.name}, fresh image: allocations made in one synchronous step or without a plan keep the write order`, async () => {
      const f = path.join(dir, `${v.seed}-fresh.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', v.opts, f, '8M']);
      const rec = new CrashRecorder(f);
      let syncAllocated = 0;
      let directAllocated = 0;
      try {
        // Four tables' worth of cache (the image has four L2 tables and refcount blocks): tables
        // are written back (evicted) between flushes, and often still cached for the next write.
        const img = await openImage(f, { writable: true, tuning: { qcow2: { cacheSize: 4 * 4096 } } });
        for (let round = 0; round < 3; round++) {
          // One writer, then two: the image lock is often free for a synchronous allocation, and not always.
          await concurrentStorm(img, rec, 700 + 10 * v.seed + round, 1 + (round % 2), 40, 4096, { trySync: true });
          await rec.guestFlush(() => img.flush());
        }
        syncAllocated = img.stats().driver['syncAllocatedClusters'] ?? 0;
        directAllocated = img.stats().driver['directAllocatedClusters'] ?? 0;
        await img.close();
      } finally {
        rec.stop();
      }
      expect(syncAllocated).toBeGreaterThan(10);
      expect(directAllocated, 'larger writes allocated without a plan (WritePath.tryAllocate)').toBeGreaterThan(10);
      const states = rec.states({ seed: v.seed, perEpoch: 12, allSubsetsUpTo: 6 });
      const res = await checkCrashStates(rec, states, {
        file: path.join(dir, `${v.seed}-fresh-state.qcow2`),
        format: 'qcow2',
        initial: Buffer.alloc(8 * MiB),
        budget: 100,
        seed: v.seed,
      });
      expect(res.states).toBeGreaterThan(50);
      expect(res.bad).toEqual([]);
    });
  }

  for (const v of variants.filter((x) => !x.trySync)) {
    it(`${v.name}, fresh image, writes up to 512 KiB: allocations whose data is in flight while the image lock is free keep the write order`, async () => {
      const f = path.join(dir, `${v.seed}-large.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', v.opts, f, '8M']);
      const img = await openImage(f, { writable: true, tuning: { qcow2: { cacheSize: 4 * 4096 } } });
      // Every L2 table made and cached first (a write needing a new table plans): the run starts after.
      for (let c = 0; c < 8 * MiB; c += 2 * MiB) await img.write(c, Buffer.alloc(4096, 1));
      await img.flush();
      const rec = new CrashRecorder(f);
      let directAllocated = 0;
      try {
        for (let round = 0; round < 2; round++) {
          // Writes of 128-512 KiB, two writers and flushes racing them: those above SYNC_IO_MAX
          // keep their data in flight while the image lock is free and their entries unset.
          await concurrentStorm(img, rec, 760 + 10 * v.seed + round, 2, 10, 128 * KiB);
          await rec.guestFlush(() => img.flush());
        }
        directAllocated = img.stats().driver['directAllocatedClusters'] ?? 0;
        await img.close();
      } finally {
        rec.stop();
      }
      expect(directAllocated, 'large writes allocated without a plan (WritePath.tryAllocate)').toBeGreaterThan(100);
      const initial = Buffer.alloc(8 * MiB);
      for (let c = 0; c < 8 * MiB; c += 2 * MiB) initial.fill(1, c, c + 4096);
      const states = rec.states({ seed: v.seed, perEpoch: 12, allSubsetsUpTo: 6 });
      const res = await checkCrashStates(rec, states, {
        file: path.join(dir, `${v.seed}-large-state.qcow2`),
        format: 'qcow2',
        initial,
        budget: 80,
        seed: v.seed,
      });
      expect(res.states).toBeGreaterThan(40);
      expect(res.bad).toEqual([]);
    });
  }

  for (const v of variants) {
    it(`${v.name}, host writes failing at random: no state is corrupt, what a flush acknowledged is kept`, async () => {
      const f = path.join(dir, `${v.seed}-faults.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', v.opts, f, '8M']);
      qemuIo(f, ['write -P 0x41 0 1m', 'write -P 0x42 3m 512k']);
      const initial = Buffer.alloc(8 * MiB);
      initial.fill(0x41, 0, MiB);
      initial.fill(0x42, 3 * MiB, 3 * MiB + 512 * KiB);
      const rec = new CrashRecorder(f);
      let failedWrites = 0;
      try {
        const img = await openImage(f, { writable: true, tuning: { qcow2: { cacheSize: 3 * 4096 } } });
        failedWrites = await faultyStorm(img, rec, {
          seed: 900 + 10 * v.seed,
          rounds: 3,
          writers: 1,
          ops: 30,
          unit: 4096,
          trySync: v.trySync,
          // Root tables are written a few times a run: they fail often, so their failures are seen.
          faults: { rate: 0.04, byTag: { l1: 0.5, reftable: 0.5, header: 0.3, refblock: 0.1, l2: 0.1 }, seed: 900 + v.seed },
        });
        await img.close();
      } finally {
        rec.stop();
      }
      expect(rec.injected).toBeGreaterThan(5);
      expect(failedWrites).toBeGreaterThan(2);
      const final = qemuCheck(f);
      expect(Number(final.json?.['corruptions'] ?? 0) + Number(final.json?.['check-errors'] ?? 0), final.output).toBe(0);
      const states = rec.states({ seed: v.seed, perEpoch: 10, allSubsetsUpTo: 5 });
      const res = await checkCrashStates(rec, states, {
        file: path.join(dir, `${v.seed}-faults-state.qcow2`),
        format: 'qcow2',
        initial,
        budget: 80,
        seed: v.seed,
      });
      expect(res.states).toBeGreaterThan(40);
      expect(res.bad).toEqual([]);
    });
  }

  it('default refcounts: a flush racing an allocating write, then a flush with no refcount change, still syncs the data before the L2 table', async () => {
    const f = path.join(dir, 'race.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', f, '8M']);
    const rec = new CrashRecorder(f);
    try {
      const img = await openImage(f, { writable: true });
      for (let i = 0; i < 6; i++) {
        // The allocating write's data is held back (its clusters allocated) until a flush has finished.
        let release!: () => void;
        let held!: () => void;
        const gate = new Promise<void>((r) => (release = r));
        const reached = new Promise<void>((r) => (held = r));
        rec.hold = (kind, tag) => {
          if (kind !== 'write' || tag !== 'data') return undefined;
          held();
          return gate;
        };
        const off = i * MiB + 512;
        const data = Buffer.alloc(64 * 1024, i + 1);
        const writing = rec.guestWrite(off, data, () => img.write(off, data));
        await reached;
        await rec.guestFlush(() => img.flush());
        rec.hold = undefined;
        release();
        await writing;
        await rec.guestFlush(() => img.flush());
      }
      await img.close();
    } finally {
      rec.stop();
    }
    const states = rec.states({ seed: 3, perEpoch: 8, allSubsetsUpTo: 5 });
    const res = await checkCrashStates(rec, states, {
      file: path.join(dir, 'race-state.qcow2'),
      format: 'qcow2',
      initial: Buffer.alloc(8 * MiB),
      budget: 80,
      seed: 3,
    });
    expect(res.states).toBeGreaterThan(20);
    expect(res.bad).toEqual([]);
  });
});
