import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readPartitionTable, SECTOR, type PartitionTable } from '../../src/image/partition-table';

/** sfdisk writes the tables (the oracle); `sfdisk --json` says where it put each partition. */
let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-parts-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function disk(name: string, sizeMiB: number, script: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, '');
  fs.truncateSync(f, sizeMiB << 20);
  execFileSync('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', f], { input: script });
  return f;
}

function read(file: string) {
  const fd = fs.openSync(file, 'r');
  const size = fs.fstatSync(fd).size;
  const reader = async (offset: number, length: number) => {
    const b = Buffer.alloc(length);
    fs.readSync(fd, b, 0, length, offset);
    return b;
  };
  return { reader, size, close: () => fs.closeSync(fd) };
}

async function table(file: string): Promise<PartitionTable> {
  const r = read(file);
  try {
    return await readPartitionTable(r.reader, r.size);
  } finally {
    r.close();
  }
}

/** What sfdisk says: partition number (from the node name), byte offset, byte size. */
function sfdiskView(file: string): Array<{ number: number; offset: number; size: number }> {
  const j = JSON.parse(execFileSync('sfdisk', ['--json', file], { encoding: 'utf8' })) as {
    partitiontable: { partitions: Array<{ node: string; start: number; size: number; type: string }> };
  };
  return j.partitiontable.partitions
    .filter((p) => !['5', 'f', '85'].includes(p.type))
    .map((p) => ({ number: Number(/(\d+)$/.exec(p.node)![1]), offset: p.start * SECTOR, size: p.size * SECTOR }));
}

describe('readPartitionTable', () => {
  it('reads MBR primary and logical partitions as sfdisk made them (Linux numbering)', async () => {
    const f = disk('mbr.img', 64, 'label: dos\n,8M,83\n,8M,83\n,,5\n,10M,83\n,10M,82\n,,83\n');
    const t = await table(f);
    expect(t.kind).toBe('mbr');
    if (t.kind !== 'mbr') return;
    expect(t.partitions.map(({ number, offset, size }) => ({ number, offset, size }))).toEqual(sfdiskView(f));
    expect(t.partitions.map((p) => p.number)).toEqual([1, 2, 5, 6, 7]);
    expect(t.partitions.find((p) => p.number === 6)!.type).toBe('82');
  });

  it('reads GPT partitions with their names, entry i as partition i+1', async () => {
    const f = disk('gpt.img', 64, 'label: gpt\nsize=8M, type=L, name=boot\nsize=16M, type=L\ntype=L, name=root\n');
    const t = await table(f);
    expect(t.kind).toBe('gpt');
    if (t.kind !== 'gpt') return;
    expect(t.partitions.map(({ number, offset, size }) => ({ number, offset, size }))).toEqual(sfdiskView(f));
    expect(t.partitions[0]!.name).toBe('boot');
    expect(t.partitions[2]!.name).toBe('root');
    expect(t.partitions[0]!.type).toBe('0fc63daf-8483-4772-8e79-3d69d8477de4');
  });

  it('keeps GPT numbers when an entry in the middle is empty', async () => {
    const f = disk('gpt-gap.img', 64, 'label: gpt\n,8M,L\n,8M,L\n,8M,L\n');
    execFileSync('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', '--delete', f, '2']);
    const t = await table(f);
    expect(t.kind === 'gpt' && t.partitions.map((p) => p.number)).toEqual([1, 3]);
  });

  it('a blank disk, an empty MBR and a boot sector that is no MBR have no table', async () => {
    const blank = path.join(dir, 'blank.img');
    fs.writeFileSync(blank, Buffer.alloc(1 << 20));
    expect((await table(blank)).kind).toBe('none');
    const fat = path.join(dir, 'fat.img');
    const b = Buffer.alloc(1 << 20);
    b.writeUInt16LE(0xaa55, 510);
    b[446] = 0x12; // a status byte no MBR has: this is a filesystem's boot code
    fs.writeFileSync(fat, b);
    expect((await table(fat)).kind).toBe('none');
  });

  it('calls damaged tables damaged: overlaps, past the end, looping logical chains, bad GPT checksums', async () => {
    // Overlap: patch partition 2 to start inside partition 1.
    const ov = disk('overlap.img', 32, 'label: dos\n,8M,83\n,8M,83\n');
    const b = fs.readFileSync(ov);
    b.writeUInt32LE(b.readUInt32LE(446 + 8) + 8, 446 + 16 + 8);
    fs.writeFileSync(ov, b);
    expect(await table(ov)).toMatchObject({ kind: 'damaged', reason: expect.stringMatching(/overlap/) });

    // Past the end: the disk shrank under its table.
    const past = disk('past.img', 32, 'label: dos\n,,83\n');
    fs.truncateSync(past, 16 << 20);
    expect(await table(past)).toMatchObject({ kind: 'damaged', reason: expect.stringMatching(/past the end/) });

    // A logical chain whose second EBR points back at the first.
    const loop = disk('loop.img', 64, 'label: dos\n,,5\n,8M,83\n,8M,83\n');
    const l = fs.readFileSync(loop);
    const extStart = l.readUInt32LE(446 + 8);
    const secondEbr = extStart + l.readUInt32LE(extStart * SECTOR + 446 + 16 + 8);
    l[secondEbr * SECTOR + 446 + 16 + 4] = 0x05; // the second EBR's "next" link, aimed at itself
    l.writeUInt32LE(secondEbr - extStart, secondEbr * SECTOR + 446 + 16 + 8);
    fs.writeFileSync(loop, l);
    expect(await table(loop)).toMatchObject({ kind: 'damaged', reason: expect.stringMatching(/loops/) });

    // GPT whose entries were changed without fixing the checksum.
    const g = disk('gpt-bad.img', 32, 'label: gpt\n,8M,L\n');
    const gb = fs.readFileSync(g);
    gb[2 * SECTOR + 32]! ^= 0xff;
    fs.writeFileSync(g, gb);
    expect(await table(g)).toMatchObject({ kind: 'damaged', reason: expect.stringMatching(/checksum/) });
  });
});
