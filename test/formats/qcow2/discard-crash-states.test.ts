/**
 * Discard under power cuts: whole-cluster discards drop L2 references, the frees reach the
 * refcount blocks only after that change is durable (leak rather than corrupt), freed clusters
 * are punched and reused by later writes. Every crash state (durable writes + any subset of the
 * unsynced ones, punches included) must pass `qemu-img check` with no cluster both free and
 * referenced, and read back what flush() acknowledged (discarded ranges as zeros).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { checkCrashStates, CrashRecorder } from '../../helpers/crash-states';
import { qemuCheck, qemuImg, qemuIo } from '../../helpers/qemu';
import { tempDir } from './helpers';

const dir = tempDir('discard-crash');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const KiB = 1024;
const MiB = 1024 * KiB;
const tick = () => new Promise((r) => setImmediate(r));

const variants = [
  { name: 'default refcounts', opts: 'cluster_size=4096', seed: 11 },
  { name: 'lazy_refcounts', opts: 'cluster_size=4096,lazy_refcounts=on', seed: 12 },
  { name: 'snapshot-shared clusters', opts: 'cluster_size=4096', seed: 13, snapshot: true },
];

describe('qcow2 discard and cluster reuse under crash states', () => {
  for (const v of variants) {
    it(`${v.name}: frees in the safe order, reused clusters never both free and referenced`, async () => {
      const f = path.join(dir, `${v.seed}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', v.opts, f, '4M']);
      qemuIo(f, ['write -P 0x31 0 2M']);
      if (v.snapshot) qemuImg(['snapshot', '-c', 'snap', f]);
      const initial = Buffer.alloc(4 * MiB);
      initial.fill(0x31, 0, 2 * MiB);
      const sizeBefore = fs.statSync(f).size;
      const rec = new CrashRecorder(f);
      try {
        // A tiny cache: tables are evicted (written back) in the middle of discards and writes.
        const img = await openImage(f, { writable: true, tuning: { qcow2: { cacheSize: 2 * 4096 } } });
        const discard = (off: number, len: number) => rec.guestWrite(off, Buffer.alloc(len), () => img.discard(off, len));
        const write = (off: number, len: number, fill: number) => {
          const data = Buffer.alloc(len, fill);
          return rec.guestWrite(off, data, () => img.write(off, data));
        };
        await discard(0, 1 * MiB);
        await discard(1 * MiB + 6 * KiB, 5 * KiB); // partial clusters: zeros written
        await rec.guestFlush(() => img.flush());
        await tick(); // freed clusters punched and handed to the allocator
        // New data lands on the freed clusters, racing more discards and a flush.
        await Promise.all([
          write(2 * MiB, 512 * KiB, 0x41),
          discard(1536 * KiB, 256 * KiB),
          rec.guestFlush(() => img.flush()),
          write(3 * MiB, 256 * KiB, 0x42),
        ]);
        await discard(2 * MiB + 64 * KiB, 64 * KiB); // a reused cluster freed again
        await rec.guestFlush(() => img.flush());
        await tick();
        await write(1 * MiB + 512 * KiB, 128 * KiB, 0x43);
        await img.close();
      } finally {
        rec.stop();
      }
      if (!v.snapshot) expect(fs.statSync(f).size).toBeLessThanOrEqual(sizeBefore + 64 * KiB); // reused, not appended
      expect(rec.writes.some((w) => (w as { kind: string }).kind === 'punch') || v.snapshot).toBe(true);
      const states = rec.states({ seed: v.seed, perEpoch: 10, allSubsetsUpTo: 5 });
      const res = await checkCrashStates(rec, states, {
        file: path.join(dir, `${v.seed}-state.qcow2`),
        format: 'qcow2',
        initial,
        budget: 90,
        seed: v.seed,
      });
      expect(res.states).toBeGreaterThan(30);
      expect(res.bad).toEqual([]);
      const final = qemuCheck(f);
      expect(final.ok, final.output).toBe(true);
    }, 120_000);
  }
});
