/**
 * The metadata log: entries we build are ones QEMU replays (qemu-img check -r all), at the start
 * of the log and wrapping past its end; the write order of a commit as host I/O shows it; a
 * commit larger than one entry is split over several.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as bat from '../../../src/formats/vhdx/bat';
import { newGuid } from '../../../src/formats/vhdx/guid';
import { HEADER_OFFSETS, parseHeader, serializeHeader, type VhdxHeader } from '../../../src/formats/vhdx/header';
import { HeaderSlots } from '../../../src/formats/vhdx/header-slots';
import { readLayout } from '../../../src/formats/vhdx/layout';
import { buildLogEntry, sectorsPerEntry } from '../../../src/formats/vhdx/log-entry';
import { MetadataLog } from '../../../src/formats/vhdx/metadata-log';
import { addIoObserver, HostFile } from '../../../src/io/host-file';
import type { IoEvent } from '../../../src/io/counters';
import { openImage } from '../../../src/image/open';
import { qemuCheck, qemuImg, qemuIo, qemuRaw } from '../../helpers/qemu';
import { readAll, rmrf, tmpDir } from './helpers';

const dir = tmpDir('log');
afterAll(() => rmrf(dir));
const M = 1 << 20;

function current(buf: Buffer): { h: VhdxHeader; slot: number } {
  const [a, b] = HEADER_OFFSETS.map((o) => parseHeader(buf.subarray(o, o + 4096))) as [VhdxHeader, VhdxHeader];
  return a.sequenceNumber > b.sequenceNumber ? { h: a, slot: 0 } : { h: b, slot: 1 };
}

describe('vhdx log', () => {
  for (const at of ['start', 'wrapping'] as const) {
    it(`an entry we build (${at} of the log) is replayed by qemu-img check -r all, and by our read-only open in memory`, async () => {
      const file = path.join(dir, `${at}.vhdx`);
      qemuImg(['create', '-f', 'vhdx', '-o', 'block_size=1M', file, String(8 * M)]);
      qemuIo(file, ['write -P 0x41 0 1M', 'write -P 0x42 2M 1M'], 'vhdx');
      const buf = fs.readFileSync(file);
      const f = await HostFile.open(file, false);
      const l = await readLayout(file, f, false);
      await f.close();
      const sector = Buffer.from(buf.subarray(l.regions.bat.offset, l.regions.bat.offset + 4096));
      bat.setEntry(sector, 2, bat.ZERO, 0);
      const logGuid = newGuid();
      const pos = at === 'start' ? 0 : l.header.logLength - 4096;
      const entry = buildLogEntry({
        sequence: 9n,
        tail: pos,
        logGuid,
        flushedFileOffset: buf.length,
        lastFileOffset: buf.length,
        sectors: [[l.regions.bat.offset, sector]],
      });
      for (let i = 0; i < entry.length; i += 4096) entry.copy(buf, l.header.logOffset + ((pos + i) % l.header.logLength), i, i + 4096);
      const { h, slot } = current(buf);
      serializeHeader({ ...h, logGuid }).copy(buf, HEADER_OFFSETS[slot]);
      fs.writeFileSync(file, buf);

      const ours = await readAll(file); // replayed in memory
      expect(ours.subarray(2 * M, 3 * M).every((x) => x === 0)).toBe(true);
      expect(ours.subarray(0, M).every((x) => x === 0x41)).toBe(true);
      expect(fs.readFileSync(file).equals(buf)).toBe(true);
      expect(qemuCheck(file, 'vhdx').ok).toBe(false); // QEMU refuses read-only until replayed
      qemuImg(['check', '-r', 'all', '-f', 'vhdx', file]);
      expect(fs.readFileSync(qemuRaw(file, `${file}.raw`, 'vhdx')).equals(ours)).toBe(true);
    });
  }

  it('a logged write over payload data shows in a read-only open (overlay) and after QEMU replays it', async () => {
    const file = path.join(dir, 'payload.vhdx');
    qemuImg(['create', '-f', 'vhdx', '-o', 'block_size=1M', file, String(4 * M)]);
    qemuIo(file, ['write -P 0x41 0 1M'], 'vhdx');
    const buf = fs.readFileSync(file);
    const f = await HostFile.open(file, false);
    const l = await readLayout(file, f, false);
    await f.close();
    const host = bat.entryOffsetMB(l.bat, 0) * M;
    const logGuid = newGuid();
    const entry = buildLogEntry({
      sequence: 1n,
      tail: 0,
      logGuid,
      flushedFileOffset: buf.length,
      lastFileOffset: buf.length,
      sectors: [[host + 8192, Buffer.alloc(4096, 0x5e)]],
    });
    entry.copy(buf, l.header.logOffset);
    const { h, slot } = current(buf);
    serializeHeader({ ...h, logGuid }).copy(buf, HEADER_OFFSETS[slot]);
    fs.writeFileSync(file, buf);
    const ours = await readAll(file);
    expect(ours.subarray(8192, 12288).every((x) => x === 0x5e)).toBe(true);
    expect(ours.subarray(0, 8192).every((x) => x === 0x41)).toBe(true);
    qemuImg(['check', '-r', 'all', '-f', 'vhdx', file]);
    expect(fs.readFileSync(qemuRaw(file, `${file}.raw`, 'vhdx')).equals(ours)).toBe(true);
  });

  it('a commit writes in the spec order: data, header (LogGuid), log, BAT in place, header (null LogGuid), each flushed', async () => {
    const file = path.join(dir, 'order.vhdx');
    qemuImg(['create', '-f', 'vhdx', '-o', 'block_size=1M', file, String(8 * M)]);
    const img = await openImage(file, { writable: true });
    const events: IoEvent[] = [];
    const stop = addIoObserver((e) => {
      if (e.path === file && e.kind !== 'read') events.push(e);
    });
    try {
      await img.write(3 * M + 5, Buffer.alloc(1000, 9));
      await img.flush();
    } finally {
      stop();
      await img.close();
    }
    const seq = events.map((e) => (e.kind === 'flush' ? 'sync' : `${e.kind}:${e.tag ?? ''}`)).filter((x, i, a) => x !== a[i - 1]);
    // The first write's header update (both slots), then the allocation and the commit.
    expect(seq).toEqual([
      'write:header',
      'sync',
      'truncate:',
      'write:data',
      'sync',
      'write:header',
      'sync',
      'write:log',
      'sync',
      'write:bat',
      'sync',
      'write:header',
      'sync',
    ]);
    expect(qemuCheck(file, 'vhdx').ok).toBe(true);
  });

  it('dirty sectors beyond one entry are committed in several entries', async () => {
    const file = path.join(dir, 'split.vhdx');
    qemuImg(['create', '-f', 'vhdx', '-o', 'block_size=1M,log_size=1M', file, String(8 * M)]);
    const size = fs.statSync(file).size;
    const per = sectorsPerEntry(M);
    const n = per * 2 + 7;
    // Sectors past the end of the image's metadata (a scratch area), so the image stays valid.
    const sectors = Array.from({ length: n }, (_, i) => {
      const b = Buffer.alloc(4096, (i % 250) + 1);
      return [size + i * 4096, b] as [number, Buffer];
    });
    const dirty = new Set(sectors.map(([o]) => o));
    const f = await HostFile.open(file, true);
    try {
      const l = await readLayout(file, f, true);
      const slots = new HeaderSlots(f, l.header, l.slot);
      const log = new MetadataLog(f, slots, { offset: l.header.logOffset, length: l.header.logLength }, () => size + n * 4096);
      await log.commit({
        snapshot: () => sectors.map(([o, b]) => [o, b, 1]),
        committed: (o) => dirty.delete(o),
      });
      expect(log.commits).toBe(3);
      expect(dirty.size).toBe(0);
    } finally {
      await f.close();
    }
    const after = fs.readFileSync(file);
    for (const [o, b] of sectors) expect(after.subarray(o, o + 4096).equals(b)).toBe(true);
    expect(qemuCheck(file, 'vhdx').ok).toBe(true);
  });
});
