/**
 * The seed, measured: the metadata cache batches metadata writes (512 MiB sequential fill:
 * at most 1 metadata write per 100 data writes, no host flush before the final flush), and its
 * ordering rule holds under evictions (no L2 write before the datasync that follows the
 * refcount-block writes counting its clusters; no L1 write before the L2 tables are durable).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { IoEvent } from '../../../src/io/counters';
import { addIoObserver } from '../../../src/io/host-file';
import { openImage } from '../../../src/image/open';
import { qemuCheck, qemuCompare, qemuImg, qemuIo, rng } from '../../helpers/qemu';
import { tempDir } from './helpers';

const dir = tempDir('seed');
const MiB = 1 << 20;
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('qcow2 metadata cache (seed 2)', () => {
  it('512 MiB sequential fill of an empty 64 KiB-cluster image: <= 1 metadata write per 100 data writes, no flush before the final one', async () => {
    const f = path.join(dir, 'fill.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '512M']);
    const events: IoEvent[] = [];
    const stop = addIoObserver((e) => {
      if (e.path === f) events.push(e);
    });
    const img = await openImage(f, { writable: true });
    const buf = Buffer.alloc(MiB);
    for (let i = 0; i < 512; i++) {
      buf.fill((i % 255) + 1); // never all-zero (those become zero clusters)
      buf.writeUInt32BE(i, 100);
      await img.write(i * MiB, buf);
    }
    const beforeFlush = events.slice();
    await img.flush();
    const stats = img.stats();
    await img.close();
    stop();
    const writes = events.filter((e) => e.kind === 'write');
    const dataWrites = writes.filter((e) => e.tag === 'data').length;
    const metaWrites = writes.length - dataWrites;
    const flushesBefore = beforeFlush.filter((e) => e.kind === 'flush').length;
    console.log(
      `seed fill: dataWrites=${dataWrites} metadataWrites=${metaWrites} ratio=${(metaWrites / dataWrites).toFixed(4)} flushesBeforeFinal=${flushesBefore} totalFlushes=${events.filter((e) => e.kind === 'flush').length} driver=${JSON.stringify(stats.driver)}`,
    );
    expect(dataWrites).toBeGreaterThanOrEqual(512);
    expect(metaWrites * 100).toBeLessThanOrEqual(dataWrites);
    expect(flushesBefore).toBe(0);
    expect(stats.driver['metadataWrites']).toBe(metaWrites);
    const check = qemuCheck(f);
    expect(check.ok, check.output).toBe(true);
    for (const i of [0, 1, 255, 256, 511])
      expect(qemuIo(f, [`read -P ${(i % 255) + 1} ${i * MiB + 4096} 4096`])).not.toMatch(/Pattern verification failed/);
  });

  it('ordering under evictions: thousands of seeded ops with a tiny cache', async () => {
    const f = path.join(dir, 'order.qcow2');
    const size = 48 * MiB;
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', f, String(size)]);
    qemuIo(f, ['write -P 0x21 0 8M']); // some allocated clusters to overwrite and zero
    qemuImg(['snapshot', '-c', 'snap', f]); // shared clusters: COW + frees
    const mirror = Buffer.alloc(size);
    mirror.fill(0x21, 0, 8 * MiB);
    const events: IoEvent[] = [];
    const stop = addIoObserver((e) => {
      if (e.path === f) events.push(e);
    });
    const img = await openImage(f, { writable: true, tuning: { qcow2: { cacheSize: 4 * 4096 } } });
    const r = rng(4242);
    for (let op = 0; op < 3000; op++) {
      const len = 1 + Math.floor(r() * (r() < 0.8 ? 8192 : 131072));
      const off = Math.floor(r() * (size - len));
      const x = r();
      if (x < 0.1) {
        await img.writeZeroes(off, len);
        mirror.fill(0, off, off + len);
      } else {
        const d = Buffer.alloc(len, op & 0xff);
        d.copy(mirror, off);
        await img.write(off, d);
      }
      if (x > 0.995) await img.flush();
    }
    const st = img.stats().driver;
    await img.close();
    stop();
    // The rule: after a refcount write ('refblock'/'reftable'), no 'l2' write until a flush;
    // after an 'l2' write, no 'l1' write until a flush.
    let refcountUnsynced = false;
    let l2Unsynced = false;
    let l2Writes = 0;
    let violations = 0;
    for (const e of events) {
      if (e.kind === 'flush') {
        refcountUnsynced = false;
        l2Unsynced = false;
      } else if (e.kind === 'write') {
        if (e.tag === 'refblock' || e.tag === 'reftable') refcountUnsynced = true;
        else if (e.tag === 'l2') {
          l2Writes++;
          if (refcountUnsynced) violations++;
          l2Unsynced = true;
        } else if (e.tag === 'l1' && l2Unsynced) violations++;
      }
    }
    expect(l2Writes).toBeGreaterThan(100); // evictions really happened
    expect(st['cacheMisses']).toBeGreaterThan(100);
    expect(violations).toBe(0);
    const mf = `${f}.mirror`;
    fs.writeFileSync(mf, mirror);
    const check = qemuCheck(f);
    expect(check.ok, check.output).toBe(true);
    expect(qemuCompare(f, mf).equal).toBe(true);
  });

  it('the default cache holds the L2 tables of 8 GiB of virtual disk (64 KiB clusters)', async () => {
    const f = path.join(dir, 'eight.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', f, '8G']);
    qemuIo(
      f,
      Array.from({ length: 16 }, (_, i) => `write -P ${i + 1} ${i * 512}M 64k`),
    );
    const img = await openImage(f, { writable: true });
    const b = Buffer.alloc(4096);
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 16; i++) {
        await img.read(i * 512 * MiB, b);
        expect(b[0]).toBe(i + 1);
        await img.write(i * 512 * MiB + 100 * 65536, b); // allocations touch refcount blocks too
      }
    }
    expect(img.stats().driver['cacheMisses']).toBe(16 + 1); // each L2 table once, one refcount block
    await img.close();
    expect(qemuCheck(f).ok).toBe(true);
  });
});
