/**
 * streamOptimized grain markers: the LBA a marker carries only repeats the grain table, and QEMU
 * never reads it. A garbage one (past 2^53, or another grain's) must read as qemu-img reads it,
 * with one warning per image, never EIO.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImage } from '../../../src/image/open';
import * as marker from '../../../src/formats/vmdk/stream-marker';
import { qemuImg, qemuIo, qemuRaw } from '../../helpers/qemu';
import { tmpDir } from './helpers';

const dir = tmpDir('stream-marker');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** File offsets of every grain marker, walking the stream from the header's overHead to the end-of-stream marker. */
function grainMarkers(buf: Buffer): number[] {
  const out: number[] = [];
  for (let at = Number(buf.readBigUInt64LE(64)) * 512; at + 512 <= buf.length;) {
    const size = buf.readUInt32LE(at + 8);
    if (size !== 0) {
      out.push(at);
      at = Math.ceil((at + marker.GRAIN_MARKER_SIZE + size) / 512) * 512;
      continue;
    }
    const meta = marker.parseMetaMarker(buf, at);
    if (meta.type === marker.TYPE_EOS) break;
    at += 512 + meta.numSectors * 512;
  }
  return out;
}

describe('streamOptimized grain marker LBA', () => {
  it('parses any LBA (it is not trusted)', () => {
    const b = Buffer.alloc(marker.GRAIN_MARKER_SIZE);
    b.writeBigUInt64LE(0xdeadbeefcafebaben, 0);
    b.writeUInt32LE(77, 8);
    expect(marker.parseGrainMarker(b)).toEqual({ lba: 0xdeadbeefcafebaben, size: 77 });
  });

  it("a garbage LBA (past 2^53) and another grain's LBA: read as qemu-img reads them, one warning", async () => {
    const src = path.join(dir, 'src.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', src, '4M']);
    qemuIo(src, ['write -P 0x21 0 64k', 'write -P 0x22 1M 64k', 'write -P 0x23 3M 128k'], 'vmdk');
    const s = path.join(dir, 'stream.vmdk');
    qemuImg(['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, s]);
    const buf = fs.readFileSync(s);
    const grains = grainMarkers(buf);
    expect(grains.length).toBeGreaterThanOrEqual(3);
    buf.writeBigUInt64LE(0xdeadbeefcafebaben, grains[0]);
    buf.writeBigUInt64LE(buf.readBigUInt64LE(grains[2]), grains[1]); // grain 1 claims to be grain 2
    fs.writeFileSync(s, buf);

    const theirs = fs.readFileSync(qemuRaw(s));
    const warnings: string[] = [];
    const img = await openImage(s, { writable: false, warn: (m) => warnings.push(m) });
    try {
      const ours = Buffer.alloc(img.virtualSize);
      await img.read(0, ours);
      expect(ours.equals(theirs)).toBe(true);
      expect(ours[0]).toBe(0x21);
      expect(ours[1 << 20]).toBe(0x22);
    } finally {
      await img.close();
    }
    expect(warnings.filter((w) => /grain marker/.test(w))).toHaveLength(1);
    expect(warnings.join('\n')).toMatch(/stream\.vmdk: grain marker at \d+ says LBA 16045690984503098046, the grain table says 0/);
  });
});
