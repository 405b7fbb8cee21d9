/** Broken and hostile VHDX files: a one-line VdiskError (or a safe open), never a hang, crash or huge allocation. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as bat from '../../../src/formats/vhdx/bat';
import { sealChecksum } from '../../../src/formats/vhdx/crc32c';
import { newGuid } from '../../../src/formats/vhdx/guid';
import { HEADER_OFFSETS, parseHeader, serializeHeader, type VhdxHeader } from '../../../src/formats/vhdx/header';
import { buildLogEntry } from '../../../src/formats/vhdx/log-entry';
import { parseMetadataRegion, serializeMetadata } from '../../../src/formats/vhdx/metadata';
import { serializeParentLocator } from '../../../src/formats/vhdx/parent-locator';
import { parseRegionTable, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE } from '../../../src/formats/vhdx/region-table';
import { openImage } from '../../../src/image/open';
import { isVdiskError } from '../../../src/io/errors';
import { qemuImg, qemuIo } from '../../helpers/qemu';
import { createChild, readAll, rmrf, tmpDir } from './helpers';

const dir = tmpDir('hostile');
afterAll(() => rmrf(dir));
const M = 1 << 20;

function base(name: string, writes: string[] = ['write -P 0x41 0 1M'], opts = 'block_size=1M'): string {
  const file = path.join(dir, name);
  qemuImg(['create', '-f', 'vhdx', '-o', opts, file, String(8 * M)]);
  if (writes.length) qemuIo(file, writes, 'vhdx');
  return file;
}

function regions(buf: Buffer) {
  const r = parseRegionTable('x', buf.subarray(REGION_TABLE_OFFSETS[0], REGION_TABLE_OFFSETS[0] + REGION_TABLE_SIZE), buf.length);
  if (typeof r === 'string') throw new Error(r);
  return r;
}

/** The current header of `buf` (the one with the higher sequence number). */
function header(buf: Buffer): { h: VhdxHeader; slot: number } {
  const hs = HEADER_OFFSETS.map((o) => parseHeader(buf.subarray(o, o + 4096)));
  const [a, b] = hs as [VhdxHeader, VhdxHeader];
  return a.sequenceNumber > b.sequenceNumber ? { h: a, slot: 0 } : { h: b, slot: 1 };
}

function setHeader(buf: Buffer, changes: Partial<VhdxHeader>): void {
  const { h, slot } = header(buf);
  serializeHeader({ ...h, ...changes }).copy(buf, HEADER_OFFSETS[slot]);
}

/** Rewrites metadata items (File Parameters block size, Virtual Disk Size) in place. */
function patchMetadata(buf: Buffer, fn: (meta: Buffer, items: Map<string, number>) => void): void {
  const r = regions(buf);
  const meta = buf.subarray(r.metadata.offset, r.metadata.offset + r.metadata.length);
  const items = new Map<string, number>();
  const n = meta.readUInt16LE(10);
  for (let i = 0; i < n; i++) items.set(meta.subarray(32 + i * 32, 48 + i * 32).toString('hex'), meta.readUInt32LE(48 + i * 32));
  fn(meta, items);
}

async function refused(file: string, code: string, re: RegExp, writable = false): Promise<void> {
  const before = process.memoryUsage().rss;
  let err: unknown;
  try {
    const img = await openImage(file, { writable, warn: () => {} });
    await img.close();
  } catch (e) {
    err = e;
  }
  expect(isVdiskError(err), String(err)).toBe(true);
  expect(err).toMatchObject({ code });
  expect((err as Error).message).toMatch(re);
  expect((err as Error).message).not.toContain('\n');
  expect(process.memoryUsage().rss - before).toBeLessThan(256 << 20);
}

function withBat(name: string, entry: number, state: number, offsetMB: number): string {
  const file = base(name);
  const buf = fs.readFileSync(file);
  const r = regions(buf);
  bat.setEntry(buf.subarray(r.bat.offset), entry, state, offsetMB);
  fs.writeFileSync(file, buf);
  return file;
}

describe('vhdx hostile images', () => {
  it('BAT entry past the end of the file', async () => {
    await refused(withBat('past-eof.vhdx', 1, bat.FULLY_PRESENT, 4000), 'ECORRUPT', /past the end of the file/);
  });

  it('BAT entries over the header section, the log, the BAT region, each other', async () => {
    await refused(withBat('over-header.vhdx', 1, bat.FULLY_PRESENT, 0), 'ECORRUPT', /inside the header section/);
    await refused(withBat('over-log.vhdx', 1, bat.FULLY_PRESENT, 1), 'ECORRUPT', /inside the log/);
    const file = base('over-bat.vhdx');
    const buf = fs.readFileSync(file);
    const r = regions(buf);
    bat.setEntry(buf.subarray(r.bat.offset), 1, bat.FULLY_PRESENT, r.bat.offset / M);
    fs.writeFileSync(file, buf);
    await refused(file, 'ECORRUPT', /inside the BAT/);
    const twice = base('twice.vhdx');
    const b2 = fs.readFileSync(twice);
    const r2 = regions(b2);
    const first = bat.entryOffsetMB(b2.subarray(r2.bat.offset), 0);
    bat.setEntry(b2.subarray(r2.bat.offset), 1, bat.FULLY_PRESENT, first);
    fs.writeFileSync(twice, b2);
    await refused(twice, 'ECORRUPT', /overlapping blocks/);
  });

  it('BAT entry with an undefined state', async () => {
    await refused(withBat('state5.vhdx', 2, 5, 0), 'ECORRUPT', /state 5/);
  });

  for (const bs of [0, 3 * M, 1024 * M]) {
    it(`block size ${bs}`, async () => {
      const file = base(`bs-${bs}.vhdx`, []);
      const buf = fs.readFileSync(file);
      patchMetadata(buf, (meta, items) => meta.writeUInt32LE(bs, items.get('3767a1ca36fa434db3b633f0aa44e76b')));
      fs.writeFileSync(file, buf);
      await refused(file, 'ECORRUPT', /block size/);
    });
  }

  for (const size of [2n ** 60n, 2n ** 50n, 1000n]) {
    it(`virtual disk size ${size}`, async () => {
      const file = base(`size-${size}.vhdx`, []);
      const buf = fs.readFileSync(file);
      patchMetadata(buf, (meta, items) => meta.writeBigUInt64LE(size, items.get('2442a52f1bcd7648b2115dbed83bf4b8')));
      fs.writeFileSync(file, buf);
      await refused(file, 'ECORRUPT', /Virtual Disk Size|virtual disk size/);
    });
  }

  it('both headers with bad checksums; no region table', async () => {
    const file = base('headers.vhdx', []);
    const buf = fs.readFileSync(file);
    buf[HEADER_OFFSETS[0] + 100] = buf[HEADER_OFFSETS[0] + 100]! ^ 1;
    buf[HEADER_OFFSETS[1] + 100] = buf[HEADER_OFFSETS[1] + 100]! ^ 1;
    fs.writeFileSync(file, buf);
    await refused(file, 'ECORRUPT', /neither VHDX header is valid/);
    const f2 = base('regions.vhdx', []);
    const b2 = fs.readFileSync(f2);
    b2[REGION_TABLE_OFFSETS[0] + 20] = b2[REGION_TABLE_OFFSETS[0] + 20]! ^ 1;
    b2[REGION_TABLE_OFFSETS[1] + 20] = b2[REGION_TABLE_OFFSETS[1] + 20]! ^ 1;
    fs.writeFileSync(f2, b2);
    await refused(f2, 'ECORRUPT', /neither region table is valid/);
  });

  /** A dirty log: the header names `logGuid`, `entry` is written at log offset `at`. */
  function dirtyLog(name: string, make: (buf: Buffer, logGuid: Buffer, batSector: number) => { entry: Buffer; at: number }): string {
    const file = base(name, ['write -P 0x41 0 1M', 'write -P 0x42 2M 1M']);
    const buf = fs.readFileSync(file);
    const logGuid = newGuid();
    const { h } = header(buf);
    const { entry, at } = make(buf, logGuid, regions(buf).bat.offset);
    for (let i = 0; i < entry.length; i += 4096) entry.copy(buf, h.logOffset + ((at + i) % h.logLength), i, i + 4096);
    setHeader(buf, { logGuid });
    fs.writeFileSync(file, buf);
    return file;
  }

  /** The BAT's first sector with block 2 switched to ZERO. */
  function batZeroingBlock2(buf: Buffer, batOffset: number): Buffer {
    const sector = Buffer.from(buf.subarray(batOffset, batOffset + 4096));
    bat.setEntry(sector, 2, bat.ZERO, 0);
    return sector;
  }

  it('a log entry that wraps around the end of the log is replayed (read-only: in memory only)', async () => {
    const file = dirtyLog('wrap.vhdx', (buf, logGuid, batOffset) => {
      const entry = buildLogEntry({
        sequence: 5n,
        tail: M - 4096,
        logGuid,
        flushedFileOffset: buf.length,
        lastFileOffset: buf.length,
        sectors: [[batOffset, batZeroingBlock2(buf, batOffset)]],
      });
      return { entry, at: M - 4096 }; // header+descriptor sector last in the log, data sector first
    });
    const before = fs.readFileSync(file);
    const view = await readAll(file);
    expect(view.subarray(0, M).every((b) => b === 0x41)).toBe(true);
    expect(view.subarray(2 * M, 3 * M).every((b) => b === 0)).toBe(true); // block 2 is ZERO after replay
    expect(fs.readFileSync(file).equals(before)).toBe(true);
  });

  it('a log entry whose checksum or length lies is not replayed (clean open, nothing changed)', async () => {
    for (const lie of ['crc', 'length'] as const) {
      const file = dirtyLog(`lie-${lie}.vhdx`, (buf, logGuid, batOffset) => {
        const entry = buildLogEntry({
          sequence: 1n,
          tail: 0,
          logGuid,
          flushedFileOffset: buf.length,
          lastFileOffset: buf.length,
          sectors: [[batOffset, batZeroingBlock2(buf, batOffset)]],
        });
        if (lie === 'crc') entry[5000] = entry[5000]! ^ 1;
        else {
          entry.writeUInt32LE(64 * M, 8);
          sealChecksum(entry, 4);
        }
        return { entry, at: 0 };
      });
      const view = await readAll(file);
      expect(view.subarray(2 * M, 3 * M).every((b) => b === 0x42)).toBe(true);
    }
  });

  it('a log entry writing into the log itself, or from a longer file, is refused', async () => {
    const intoLog = dirtyLog('into-log.vhdx', (buf, logGuid) => {
      const { h } = header(buf);
      const entry = buildLogEntry({
        sequence: 1n,
        tail: 0,
        logGuid,
        flushedFileOffset: buf.length,
        lastFileOffset: buf.length,
        sectors: [[h.logOffset + 8192, Buffer.alloc(4096, 7)]],
      });
      return { entry, at: 0 };
    });
    await refused(intoLog, 'ECORRUPT', /into the log itself/);
    const truncated = dirtyLog('truncated.vhdx', (buf, logGuid, batOffset) => {
      const entry = buildLogEntry({
        sequence: 1n,
        tail: 0,
        logGuid,
        flushedFileOffset: buf.length + 100 * M,
        lastFileOffset: buf.length + 100 * M,
        sectors: [[batOffset, batZeroingBlock2(buf, batOffset)]],
      });
      return { entry, at: 0 };
    });
    await refused(truncated, 'ECORRUPT', /truncated/);
    await refused(truncated, 'ECORRUPT', /truncated/, true);
  });

  it('a zero descriptor of 2^50 bytes is refused; a descriptor count of 2^32-1 makes the entry invalid (not replayed)', async () => {
    const huge = dirtyLog('zero-huge.vhdx', (buf, logGuid) => {
      const entry = buildLogEntry({
        sequence: 1n,
        tail: 0,
        logGuid,
        flushedFileOffset: buf.length,
        lastFileOffset: buf.length,
        sectors: [],
      });
      // Turn the entry into one zero descriptor of 2^50 bytes at 4 MiB (the descriptor area is zeros).
      entry.writeUInt32LE(1, 24);
      const d = entry.subarray(64, 96);
      d.write('zero', 0, 'latin1');
      d.writeBigUInt64LE(2n ** 50n, 8);
      d.writeBigUInt64LE(BigInt(4 * M), 16);
      d.writeBigUInt64LE(1n, 24);
      sealChecksum(entry, 4);
      return { entry, at: 0 };
    });
    await refused(huge, 'ECORRUPT', /past the end of the file/);
    const many = dirtyLog('desc-count.vhdx', (buf, logGuid) => {
      const entry = buildLogEntry({
        sequence: 1n,
        tail: 0,
        logGuid,
        flushedFileOffset: buf.length,
        lastFileOffset: buf.length,
        sectors: [],
      });
      entry.writeUInt32LE(0xffffffff, 24);
      sealChecksum(entry, 4);
      return { entry, at: 0 };
    });
    const view = await readAll(many);
    expect(view.subarray(2 * M, 3 * M).every((b) => b === 0x42)).toBe(true);
  });

  /** Rewrites a child's parent locator. */
  function setLocator(file: string, entries: Array<[string, string]>): void {
    const buf = fs.readFileSync(file);
    const r = regions(buf);
    const meta = parseMetadataRegion(file, buf.subarray(r.metadata.offset, r.metadata.offset + r.metadata.length));
    serializeMetadata(meta, serializeParentLocator(entries)).copy(buf, r.metadata.offset);
    fs.writeFileSync(file, buf);
  }

  it('a parent locator naming ../outside.vhdx or an absolute path outside the folder', async () => {
    const sub = path.join(dir, 'inner');
    fs.mkdirSync(sub, { recursive: true });
    const outside = path.join(dir, 'outside.vhdx');
    qemuImg(['create', '-f', 'vhdx', outside, String(4 * M)]);
    const child = path.join(sub, 'child.avhdx');
    fs.copyFileSync(outside, path.join(sub, 'p.vhdx'));
    await createChild(child, path.join(sub, 'p.vhdx'));
    const img = await openImage(outside, { writable: false });
    const linkage = (img as unknown as { dataWriteGuid: string }).dataWriteGuid;
    await img.close();
    setLocator(child, [
      ['parent_linkage', `{${linkage}}`],
      ['relative_path', '..\\outside.vhdx'],
    ]);
    await refused(child, 'EACCES', /outside/);
    setLocator(child, [
      ['parent_linkage', `{${linkage}}`],
      ['relative_path', outside],
    ]);
    await refused(child, 'EACCES', /outside/);
  });

  it('a differencing loop: a child naming itself, A -> B -> A', async () => {
    const p = path.join(dir, 'loop-p.vhdx');
    qemuImg(['create', '-f', 'vhdx', p, String(4 * M)]);
    const a = path.join(dir, 'loop-a.avhdx');
    const b = path.join(dir, 'loop-b.avhdx');
    await createChild(a, p);
    await createChild(b, p);
    const guidOf = async (f: string) => {
      const buf = fs.readFileSync(f);
      const { h } = header(buf);
      const { guidText } = await import('../../../src/formats/vhdx/guid');
      return guidText(h.dataWriteGuid);
    };
    setLocator(a, [
      ['parent_linkage', `{${await guidOf(a)}}`],
      ['relative_path', '.\\loop-a.avhdx'],
    ]);
    await refused(a, 'ECORRUPT', /loops back/);
    setLocator(a, [
      ['parent_linkage', `{${await guidOf(b)}}`],
      ['relative_path', '.\\loop-b.avhdx'],
    ]);
    setLocator(b, [
      ['parent_linkage', `{${await guidOf(a)}}`],
      ['relative_path', '.\\loop-a.avhdx'],
    ]);
    await refused(a, 'ECORRUPT', /loops back/);
  });

  it('regions and a log of gigabytes in a sparse file: opened or refused without reading them whole', async () => {
    const file = base('huge.vhdx', []);
    const buf = fs.readFileSync(file);
    for (const at of REGION_TABLE_OFFSETS) {
      const t = buf.subarray(at, at + REGION_TABLE_SIZE);
      t.writeUInt32LE(4095 * M, 16 + 32 + 24); // the metadata region (second entry) claims 4095 MiB
      sealChecksum(t, 4);
    }
    fs.writeFileSync(file, buf);
    fs.truncateSync(file, 4200 * M);
    const before = process.memoryUsage().rss;
    const img = await openImage(file, { writable: false });
    await img.close();
    expect(process.memoryUsage().rss - before).toBeLessThan(256 << 20);
    const { h } = header(buf);
    setHeader(buf, { logGuid: newGuid(), logLength: 4000 * M, logOffset: h.logOffset });
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, buf.subarray(0, M), 0, M, 0);
    fs.closeSync(fd);
    await refused(file, 'ENOTSUP', /log of \d+ bytes/);
  });

  it('an unknown required region is refused; the file is not a VHDX', async () => {
    const file = base('region.vhdx', []);
    const buf = fs.readFileSync(file);
    for (const at of REGION_TABLE_OFFSETS) {
      const t = buf.subarray(at, at + REGION_TABLE_SIZE);
      t.writeUInt32LE(3, 8);
      newGuid().copy(t, 16 + 64);
      t.writeBigUInt64LE(BigInt(buf.length - M), 16 + 64 + 16);
      t.writeUInt32LE(M, 16 + 64 + 24);
      t.writeUInt32LE(1, 16 + 64 + 28);
      sealChecksum(t, 4);
    }
    fs.writeFileSync(file, buf);
    await refused(file, 'ENOTSUP', /required region .* is unknown/);
  });
});
