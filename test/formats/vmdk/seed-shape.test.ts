import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { addIoObserver } from '../../../src/io/host-file';
import type { IoEvent } from '../../../src/io/counters';
import { openImage } from '../../../src/image/open';
import { qemuCheck, qemuCompare, qemuImg, qemuIo } from '../../helpers/qemu';
import { tmpDir } from './helpers';

/** The seed's shape, seen from the host: one data write per request, table entries after it, on flush. */
const dir = tmpDir('seed');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;

/** Host events of one file; flush/truncate/punch events carry their kind as the tag. */
type Recorded = Omit<IoEvent, 'tag'> & { tag?: string };

function record(file: string): { events: Recorded[]; stop: () => void } {
  const events: Recorded[] = [];
  const stop = addIoObserver((e) => {
    if (e.path === file && e.kind !== 'read') events.push(e.kind === 'write' ? e : { ...e, tag: e.kind });
  });
  return { events, stop };
}

describe('vmdk multi-grain allocation (the seed)', () => {
  it('1 MiB to an empty 64 KiB-grain image: one data write; GT entries only on flush, after it', async () => {
    const f = path.join(dir, 'empty.vmdk');
    qemuImg(['create', '-f', 'vmdk', f, '64M']);
    const img = await openImage(f, { writable: true });
    const rec = record(f);
    try {
      await img.write(3 * MiB, Buffer.alloc(MiB, 0xab));
      const dataWrites = rec.events.filter((e) => e.tag === 'data');
      expect(dataWrites).toHaveLength(1);
      expect(dataWrites[0]!.length).toBe(MiB);
      expect(rec.events.filter((e) => e.tag === 'gt' || e.tag === 'gd')).toHaveLength(0);
      expect(img.stats().driver['grainsAllocated']).toBe(16);
      await img.flush();
      const tags = rec.events.map((e) => e.tag);
      const firstGt = tags.indexOf('gt');
      expect(firstGt).toBeGreaterThan(tags.indexOf('data'));
      // Primary and redundant table: both written, after a datasync of the data.
      expect(rec.events.filter((e) => e.tag === 'gt')).toHaveLength(2);
      expect(tags.slice(tags.indexOf('data'), firstGt)).toContain('flush');
      // A rewrite of allocated grains: one host write, no metadata I/O.
      rec.events.length = 0;
      await img.write(3 * MiB + 4096, Buffer.alloc(128 * 1024, 0xcd));
      expect(rec.events.map((e) => e.tag)).toEqual(['data']);
    } finally {
      rec.stop();
      await img.close();
    }
    expect(qemuCheck(f, 'vmdk').ok).toBe(true);
    const mirror = path.join(dir, 'empty.mirror');
    const m = Buffer.alloc(64 * MiB);
    m.fill(0xab, 3 * MiB, 4 * MiB);
    m.fill(0xcd, 3 * MiB + 4096, 3 * MiB + 4096 + 128 * 1024);
    fs.writeFileSync(mirror, m);
    expect(qemuCompare(f, mirror, 'vmdk').equal).toBe(true);
  });

  it('an unaligned write over a parent: COW head + payload + COW tail in the same single write', async () => {
    const parent = path.join(dir, 'p.vmdk');
    qemuImg(['create', '-f', 'vmdk', parent, '8M']);
    qemuIo(parent, ['write -P 0x77 0 8M'], 'vmdk');
    const child = path.join(dir, 'c.vmdk');
    qemuImg(['create', '-f', 'vmdk', '-b', 'p.vmdk', '-F', 'vmdk', child]);
    const img = await openImage(child, { writable: true });
    const rec = record(child);
    try {
      await img.write(100_000, Buffer.alloc(300_000, 0x11));
      const data = rec.events.filter((e) => e.tag === 'data');
      expect(data).toHaveLength(1);
      expect(data[0]!.length).toBe(6 * 64 * 1024); // grains 1..6 whole
    } finally {
      rec.stop();
      await img.close();
    }
    const buf = Buffer.alloc(8 * MiB, 0x77);
    buf.fill(0x11, 100_000, 400_000);
    const mirror = path.join(dir, 'c.mirror');
    fs.writeFileSync(mirror, buf);
    expect(qemuCheck(child, 'vmdk').ok).toBe(true);
    expect(qemuCompare(child, mirror, 'vmdk').equal).toBe(true);
  });

  it("--no-multi-alloc is QEMU's way: one write per grain, each entry written through at once", async () => {
    const f = path.join(dir, 'qemu-way.vmdk');
    qemuImg(['create', '-f', 'vmdk', f, '64M']);
    const img = await openImage(f, { writable: true, tuning: { vmdk: { noMultiAlloc: true } } });
    const rec = record(f);
    try {
      await img.write(0, Buffer.alloc(MiB, 0xab));
      const tags = rec.events.map((e) => e.tag).filter((t) => t === 'data' || t === 'gt');
      expect(tags.filter((t) => t === 'data')).toHaveLength(16);
      expect(tags.filter((t) => t === 'gt')).toHaveLength(32);
      // Each entry right after its grain: data, gt, gt, data, gt, gt ...
      expect(tags.slice(0, 3)).toEqual(['data', 'gt', 'gt']);
    } finally {
      rec.stop();
      await img.close();
    }
    expect(qemuCheck(f, 'vmdk').ok).toBe(true);
  });

  it('a grain table that does not exist yet (GD entry 0) is made in both directories, GT before GD', async () => {
    const f = path.join(dir, 'nogt.vmdk');
    qemuImg(['create', '-f', 'vmdk', f, '64M']);
    // Clear GD/RGD entry 1 (grains 512..1023): qemu-img preallocates tables, VMware does not always.
    const fd = fs.openSync(f, 'r+');
    const head = Buffer.alloc(512);
    fs.readSync(fd, head, 0, 512, 0);
    const rgd = Number(head.readBigUInt64LE(48));
    const gd = Number(head.readBigUInt64LE(56));
    fs.writeSync(fd, Buffer.alloc(4), 0, 4, rgd * 512 + 4);
    fs.writeSync(fd, Buffer.alloc(4), 0, 4, gd * 512 + 4);
    fs.closeSync(fd);
    const img = await openImage(f, { writable: true });
    const rec = record(f);
    try {
      await img.write(32 * MiB + 512, Buffer.alloc(70_000, 0x42));
      await img.flush();
      const tags = rec.events.map((e) => e.tag).filter((t) => t === 'data' || t === 'gt' || t === 'gd');
      // The data first (the payload only: its zero head and tail are fresh space).
      expect(tags).toEqual(['data', 'gt', 'gt', 'gd', 'gd']);
    } finally {
      rec.stop();
      await img.close();
    }
    expect(qemuCheck(f, 'vmdk').ok).toBe(true);
    const buf = Buffer.alloc(64 * MiB);
    buf.fill(0x42, 32 * MiB + 512, 32 * MiB + 512 + 70_000);
    const mirror = path.join(dir, 'nogt.mirror');
    fs.writeFileSync(mirror, buf);
    expect(qemuCompare(f, mirror, 'vmdk').equal).toBe(true);
  });

  it('concurrent writers to the same unallocated grain never allocate it twice', async () => {
    const f = path.join(dir, 'race.vmdk');
    qemuImg(['create', '-f', 'vmdk', f, '4M']);
    const img = await openImage(f, { writable: true });
    try {
      await Promise.all(Array.from({ length: 16 }, (_, i) => img.write(i * 4096, Buffer.alloc(4096, i + 1))));
      expect(img.stats().driver['grainsAllocated']).toBe(1);
      const got = Buffer.alloc(65536);
      await img.read(0, got);
      for (let i = 0; i < 16; i++) expect(got[i * 4096]).toBe(i + 1);
    } finally {
      await img.close();
    }
    expect(qemuCheck(f, 'vmdk').ok).toBe(true);
  });

  it('a crash before flush leaves a consistent image: the tables never point at unwritten grains', async () => {
    const f = path.join(dir, 'crash.vmdk');
    qemuImg(['create', '-f', 'vmdk', f, '16M']);
    const img = await openImage(f, { writable: true });
    try {
      await img.write(0, Buffer.alloc(MiB, 0x5c));
      await img.flush();
      await img.write(4 * MiB + 512, Buffer.alloc(300_000, 0x6d)); // allocated, not flushed
      // The state a crash would leave on disk right now.
      const snap = path.join(dir, 'crash-snapshot.vmdk');
      fs.copyFileSync(f, snap);
      const check = qemuCheck(snap, 'vmdk');
      expect(check.ok, check.output).toBe(true);
      const m = Buffer.alloc(16 * MiB);
      m.fill(0x5c, 0, MiB);
      fs.writeFileSync(`${snap}.mirror`, m);
      expect(qemuCompare(snap, `${snap}.mirror`, 'vmdk').equal).toBe(true);
    } finally {
      await img.close();
    }
    expect(qemuCheck(f, 'vmdk').ok).toBe(true);
  });
  it('4 KiB writes into new grains write 4 KiB, not 64: the file stays sparse, is extended over its last grain before the data barrier, and a reopened image appends after it', async () => {
    const f = path.join(dir, 'sparse4k.vmdk');
    qemuImg(['create', '-f', 'vmdk', f, '64M']);
    const mirror = Buffer.alloc(64 * MiB);
    const G = 64 * 1024;
    const put = async (at: number, fill: number) => {
      const img = await openImage(f, { writable: true });
      try {
        await img.write(at, Buffer.alloc(4096, fill));
        await img.flush();
      } finally {
        await img.close();
      }
      mirror.fill(fill, at, at + 4096);
    };
    const before = fs.statSync(f);
    const rec = record(f);
    try {
      // Grain 5 at its start (the tail is left out), grain 9 in its middle, grain 20 at its end.
      for (const [i, at] of [5 * G, 9 * G + 8192, 21 * G - 4096].entries()) await put(at, 0x10 + i);
      const data = rec.events.filter((e) => e.tag === 'data');
      expect(data.map((e) => e.length)).toEqual([4096, 4096, 4096]);
      // Each flush: the data, then the file extended over the new grain, then the barrier, then
      // the tables (no table on disk ever points past the end of the file).
      const kinds = rec.events.map((e) => e.tag).filter((t) => t === 'data' || t === 'truncate' || t === 'flush' || t === 'gt');
      expect(kinds.slice(0, 4)).toEqual(['data', 'truncate', 'flush', 'gt']);
      expect(kinds.filter((t) => t === 'truncate')).toHaveLength(2); // grain 20's data ends its grain: nothing to extend
    } finally {
      rec.stop();
    }
    // Every grain lies inside the file (extended at flush): a new session's grains go after them.
    const after = fs.statSync(f);
    expect(after.size).toBe(before.size + 3 * G);
    expect((after.blocks - before.blocks) * 512).toBeLessThan(2 * G);
    // Later writes: into the holes of those grains, and a new grain appended after a reopen.
    await put(5 * G + 32768, 0x20);
    await put(9 * G, 0x21);
    await put(30 * G + 4096, 0x22);
    expect(fs.statSync(f).size).toBe(before.size + 4 * G);
    expect(qemuCheck(f, 'vmdk').ok).toBe(true);
    const m = path.join(dir, 'sparse4k.mirror');
    fs.writeFileSync(m, mirror);
    expect(qemuCompare(f, m, 'vmdk').equal).toBe(true);
  });
});
