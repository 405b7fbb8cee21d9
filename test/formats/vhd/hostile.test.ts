/**
 * Hostile VHDs: every field an image could lie in, patched into images qemu-img made. Each must
 * be refused with one VdiskError line or open safely (reads stay inside the file, never a hang,
 * a crash or a huge allocation); parent locators go through the confinement rule.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { vhdDriver } from '../../../src/formats/vhd';
import { vhdChecksum } from '../../../src/formats/vhd/footer';
import { openVerdict, tmpDir } from '../../helpers/image-io';
import { qemuImg, qemuIo } from '../../helpers/qemu';

const dir = tmpDir('vhd-hostile');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const MiB = 1 << 20;
const HDR = 512; // dynamic header of a qemu-img VHD
const BAT = 1536;

function base(name: string, fill = true): { file: string; buf: Buffer } {
  const file = path.join(dir, name);
  qemuImg(['create', '-q', '-f', 'vpc', file, '6M']);
  if (fill) qemuIo(file, ['write -P 0x61 0 64k'], 'vpc');
  return { file, buf: fs.readFileSync(file) };
}

/** Re-sums the footer (both copies) and the dynamic header after a patch. */
function reseal(buf: Buffer): Buffer {
  const foot = (at: number) => buf.writeUInt32BE(vhdChecksum(buf.subarray(at, at + 512), 64), at + 64);
  foot(0);
  foot(buf.length - 512);
  buf.writeUInt32BE(vhdChecksum(buf.subarray(HDR, HDR + 1024), 36), HDR + 36);
  return buf;
}

const verdict = (file: string): Promise<string> => openVerdict(file, 0);

const cases: Array<[string, (buf: Buffer) => Buffer, RegExp | 'opened']> = [
  ['BAT entry over the dynamic header', (b) => (b.writeUInt32BE(1, BAT), reseal(b)), /overlaps the dynamic header/],
  ['BAT entry over the BAT', (b) => (b.writeUInt32BE(BAT / 512, BAT + 4), reseal(b)), /overlaps/],
  ['two BAT entries on one block', (b) => (b.writeUInt32BE(b.readUInt32BE(BAT), BAT + 4), reseal(b)), /overlap/],
  [
    'BAT entry far past the end of the file (reads zeros, read-only)',
    (b) => (b.writeUInt32BE(0x7fffff00, BAT + 8), reseal(b)),
    /is read-only/,
  ],
  ['block size 0', (b) => (b.writeUInt32BE(0, HDR + 32), reseal(b)), /block size 0/],
  ['block size 3 MiB', (b) => (b.writeUInt32BE(3 * MiB, HDR + 32), reseal(b)), /power of two/],
  ['block size 1 GiB', (b) => (b.writeUInt32BE(1 << 30, HDR + 32), reseal(b)), /256 MiB/],
  ['2^31 BAT entries', (b) => (b.writeUInt32BE(0x80000000, HDR + 28), reseal(b)), /larger than/],
  ['BAT offset past the end', (b) => (b.writeBigUInt64BE(1n << 50n, HDR + 16), reseal(b)), /past the end/],
  [
    'disk size 2^60 (win creator, sized by Current Size)',
    (b) => {
      for (const at of [0, b.length - 512]) {
        b.write('win ', at + 28, 'latin1');
        b.writeBigUInt64BE(1n << 60n, at + 48);
      }
      return reseal(b);
    },
    /larger than 2040 GiB/,
  ],
  [
    'disk larger than its BAT covers',
    (b) => {
      for (const at of [0, b.length - 512]) {
        b.write('win ', at + 28, 'latin1');
        b.writeBigUInt64BE(BigInt(64 * MiB), at + 48);
      }
      return reseal(b);
    },
    /smaller than the disk/,
  ],
  ['bad dynamic header checksum', (b) => (b.writeUInt32BE(0x12345678, HDR + 36), b), /checksum/],
  [
    'no valid footer anywhere (then it is no VHD)',
    (b) => (b.fill(0, 0, 512), b.fill(0, b.length - 512), b),
    /content is raw but the name says .vhd/,
  ],
  [
    'footer copy with a bad checksum and the end torn',
    (b) => (b.writeUInt32BE(1, 64), b.fill(0x55, b.length - 512), b),
    /no valid VHD footer/,
  ],
  ['footer at the end torn, copy at 0 intact', (b) => (b.fill(0x55, b.length - 512), b), 'opened'],
  [
    'disk type 5',
    (b) => {
      for (const at of [0, b.length - 512]) b.writeUInt32BE(5, at + 60);
      return reseal(b);
    },
    /disk type 5/,
  ],
];

describe('hostile VHDs: refused in one line, or safe', () => {
  for (const [i, [name, patch, want]] of cases.entries()) {
    it(name, async () => {
      const { file, buf } = base(`h${i}.vhd`);
      fs.writeFileSync(file, patch(buf));
      const size = fs.statSync(file).size;
      const got = await verdict(file);
      if (want === 'opened') expect(got).toBe('opened');
      else expect(got).toMatch(want);
      expect(fs.statSync(file).size).toBeLessThan(size + 16 * MiB);
    });
  }

  it('a fixed VHD whose footer claims more than the file holds', async () => {
    const file = path.join(dir, 'fixed-lies.vhd');
    qemuImg(['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed,force_size=on', file, '1M']);
    const b = fs.readFileSync(file);
    const at = b.length - 512;
    b.writeBigUInt64BE(1n << 40n, at + 48);
    b.writeUInt32BE(vhdChecksum(b.subarray(at, at + 512), 64), at + 64);
    fs.writeFileSync(file, b);
    expect(await verdict(file)).toMatch(/holds only/);
  });

  it('differencing: a parent locator leading outside, a child that is its own parent, a loop of two', async () => {
    const sub = path.join(dir, 'inner');
    fs.mkdirSync(sub);
    qemuImg(['create', '-q', '-f', 'vpc', path.join(dir, 'outer-parent.vhd'), '4M']);
    const mk = async (child: string, parent: string) =>
      vhdDriver.create!(child, {
        size: 0,
        options: {},
        backingFile: parent,
        openBacking: () => Promise.reject(new Error('not used')),
        reach: (n) => Promise.resolve(path.resolve(path.dirname(child), n)),
      });
    await mk(path.join(sub, 'escape.vhd'), '../outer-parent.vhd');
    expect(await verdict(path.join(sub, 'escape.vhd'))).toMatch(/outside/);
    // A child naming itself: its locators point at its own file (Unique Ids differ, so a loop
    // is caught either as a mismatch or by the chain's loop check).
    qemuImg(['create', '-q', '-f', 'vpc', path.join(sub, 'a.vhd'), '4M']);
    await mk(path.join(sub, 'b.vhd'), 'a.vhd');
    await mk(path.join(sub, 'c.vhd'), 'b.vhd');
    // Make a.vhd a child of c.vhd: copy c's locators and parent id into a differencing a.vhd.
    fs.copyFileSync(path.join(sub, 'c.vhd'), path.join(sub, 'a2.vhd'));
    const a2 = fs.readFileSync(path.join(sub, 'a2.vhd'));
    const cFooter = fs.readFileSync(path.join(sub, 'c.vhd')).subarray(0, 512);
    cFooter.subarray(68, 84).copy(a2, HDR + 40); // a2's parent Unique Id = c's own
    fs.writeFileSync(path.join(sub, 'a2.vhd'), reseal(a2));
    const loop = await verdict(path.join(sub, 'a2.vhd'));
    expect(loop).not.toBe('opened');
  });
});
