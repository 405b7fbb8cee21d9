import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import { vhdDriver } from '../../../src/formats/vhd';
import { RequestMerger } from '../../../src/merge';
import type { HostFile } from '../../../src/io/host-file';
import { tmpDir } from '../../helpers/image-io';
import { qemuImg, qemuIo } from '../../helpers/qemu';

/**
 * A differencing VHD block only partly in the child is rebuilt whole (the parent's sectors
 * copied in) by one 2 MiB write. Until that write has landed, its sector bitmap must not say
 * "all here": a write elsewhere in the block would be taken for an in-place write (synchronously,
 * O_DIRECT) and then be overwritten by the rebuilt content, and a read of the parent's sectors
 * would read the child's stale bytes. Found by review; the 2 MiB write is slowed down here so
 * the window is wide.
 */
const dir = tmpDir('vhd-partial-sync');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

it('a write acknowledged during a partial block rebuild is kept, and reads stay right meanwhile', async () => {
  const parent = path.join(dir, 'p.vhd');
  qemuImg(['create', '-q', '-f', 'vpc', parent, '8M']);
  qemuIo(parent, ['write -P 0x41 0 3M'], 'vpc');
  const child = path.join(dir, 'c.vhd');
  await vhdDriver.create!(child, {
    size: 0,
    options: {},
    backingFile: 'p.vhd',
    backingFormat: 'vpc',
    openBacking: () => Promise.reject(new Error('unused')),
    reach: (n) => Promise.resolve(path.resolve(dir, n)),
  });
  let img = await openImage(child, { writable: true });
  await img.write(0, Buffer.alloc(64 * 1024, 0x71)); // block 0 stored, its first 64 KiB here
  await img.close();
  // Sectors 0-11 of block 0 read from the parent again (0x41): the block is only partly here.
  const buf = fs.readFileSync(child);
  const bitmapAt = buf.readUInt32BE(1536) * 512; // the first BAT entry: block 0's bitmap
  buf[bitmapAt] = 0x00;
  buf[bitmapAt + 1] = 0x0f;
  fs.writeFileSync(child, buf);

  img = await openImage(child, { writable: true });
  const file = (img as unknown as { table: { file: HostFile } }).table.file;
  const write = file.write.bind(file);
  file.write = async (data, pos, tag) => {
    const bytes = Array.isArray(data) ? data.reduce((n, b) => n + b.length, 0) : data.length;
    if (bytes >= 1 << 20) await new Promise((r) => setTimeout(r, 50)); // a slow disk for the rebuild
    return write(data, pos, tag);
  };
  const m = new RequestMerger(img, { delayMs: 10_000 });
  const through = { writeThrough: true };
  try {
    const w1 = m.write(0, Buffer.alloc(4096, 0x72), through); // page 0: the rebuild of block 0
    let acked = false;
    const during: Buffer[] = [];
    for (let i = 0; i < 1000 && !acked; i++) {
      await new Promise((r) => setImmediate(r));
      const r = Buffer.alloc(2048);
      if (m.readSync(4096, r) !== undefined) during.push(r); // sectors 8-11: the parent's, before and after
      acked = m.writeSync(65536, Buffer.alloc(4096, 0x73), through); // another page of block 0
    }
    if (!acked) await m.write(65536, Buffer.alloc(4096, 0x73), through); // declined: the ordinary way
    await w1;
    expect(during.filter((r) => !r.every((b) => b === 0x41)).length).toBe(0);
    const after = Buffer.alloc(4096);
    await m.read(65536, after);
    expect(after.every((b) => b === 0x73)).toBe(true);
    const first = Buffer.alloc(8192);
    await m.read(0, first);
    expect(first.subarray(0, 4096).every((b) => b === 0x72)).toBe(true);
    expect(first.subarray(4096, 6144).every((b) => b === 0x41)).toBe(true);
    expect(first.subarray(6144).every((b) => b === 0x71)).toBe(true);
  } finally {
    await m.close();
  }
});
