/**
 * Review of VDI `check -r all` (rewrites cBlocksAllocated). QEMU and VirtualBox put a new block
 * at slot cBlocksAllocated, so the count must never drop to a slot still in use. A power cut that
 * tears the map between 4 KiB pages (the header and map page 0 durable, page 1 not) leaves the
 * count ahead of the entries with a gap below the highest used slot; the repair then lowers the
 * count onto a slot in use, and the next block QEMU allocates overwrites that block's data.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { vdiDriver } from '../../../src/formats/vdi';
import { tmpDir } from '../../helpers/image-io';
import { qemuImg, qemuIo, qemuIoOutput } from '../../helpers/qemu';

const dir = tmpDir('vdi-review-repair');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('VDI check -r all', () => {
  it('never lowers the allocated count onto a slot in use (QEMU would then overwrite that block)', async () => {
    const f = path.join(dir, 'gap.vdi');
    qemuImg(['create', '-q', '-f', 'vdi', f, '2G']);
    qemuIo(f, ['write -P 0x11 1000M 1M', 'write -P 0x22 0 1M'], 'vdi'); // block 1000 -> slot 0, block 0 -> slot 1
    const b = fs.readFileSync(f);
    const bmap = b.readUInt32LE(0x154);
    expect(b.readUInt32LE(0x184), 'cBlocksAllocated').toBe(2);
    expect(b.readUInt32LE(bmap + 1000 * 4)).toBe(0);
    expect(b.readUInt32LE(bmap + 0 * 4)).toBe(1);
    // The power cut: block 1000's entry (map page 1, bytes 4096..8191) never reached the disk.
    const fd = fs.openSync(f, 'r+');
    fs.writeSync(fd, Buffer.from([0xff, 0xff, 0xff, 0xff]), 0, 4, bmap + 1000 * 4);
    fs.closeSync(fd);
    // Before any repair QEMU allocates slot 2: block 0 is safe.
    const keep = path.join(dir, 'gap.norepair.vdi');
    fs.copyFileSync(f, keep);
    qemuIo(keep, ['write -P 0x33 5M 1M'], 'vdi');
    expect(qemuIoOutput(keep, ['read -P 0x22 0 1M'], 'vdi')).not.toMatch(/verification failed|exit non-zero/);

    const r = await vdiDriver.check!(f, { writable: true, repair: true, warn: () => undefined } as never);
    expect(r.messages.join('\n')).toMatch(/allocated blocks mismatch/);
    const count = fs.readFileSync(f).readUInt32LE(0x184); // 1: slot 1 (block 0's) is next
    qemuIo(f, ['write -P 0x33 5M 1M'], 'vdi'); // the guest writes a new block after the repair
    const out = qemuIoOutput(f, ['read -P 0x22 0 1M'], 'vdi');
    expect(out, `count after repair: ${count}, block 0 lives in slot 1`).not.toMatch(/verification failed|exit non-zero/);
  });
});
