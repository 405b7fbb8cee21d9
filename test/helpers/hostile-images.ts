/**
 * Hostile images for the confinement rule (issue 8): every path field an image carries (qcow2
 * backing file and external data file, VMDK FLAT/VMFS/SPARSE extent names, parentFileNameHint)
 * aimed outside the images folder, at special files, into loops and too-deep chains; beside
 * them the names that must keep working (relative, absolute inside, through a door).
 * Base images come from qemu-img; the hostile names are patched into their bytes here.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MAX_CHAIN_DEPTH } from '../../src/image/open';
import { serializeDynamicHeader } from '../../src/formats/vhd/dynamic-header';
import { DISK_DIFFERENCING, serializeFooter } from '../../src/formats/vhd/footer';

/** 16 bytes repeated through every outside file an image could leak (canary.raw, canary.vmdk's data). */
export const CANARY_MARKER = Buffer.from('VDISKFS-CANARY!\n');
const MIB = 1 << 20;
/** Where the backing file name goes: inside the qcow2 header cluster, after the extensions. */
const QCOW2_NAME_AT = 0x8000;
const QCOW2_EXT_BACKING_FORMAT = 0xe2792aca;
const QCOW2_EXT_DATA_FILE = 0x44415441;
/** Incompatible feature bit 2: the guest data lives in the external data file. */
const QCOW2_INCOMPAT_DATA_FILE = 4n;

export type Field = 'backing file' | 'data file' | 'extent' | 'parent';
/**
 * refused: left out of the mount with one log line; allowed: shown and reads `pattern`;
 * either: a field QEMU ignores too (the name inside a monolithicSparse descriptor) — shown or
 * left out, but never a byte from outside.
 */
export type Verdict = 'refused' | 'allowed' | 'either';

export interface HostileCase {
  /** Path relative to the images folder. */
  name: string;
  field?: Field;
  /** How the name escapes (abs, dotdot, symlink, fifo, loop, deep ...) or why it is fine. */
  escape: string;
  /** The name as patched in (NULs and all). */
  target?: string;
  verdict: Verdict;
  /** allowed: every byte of the view's first 64 KiB. */
  pattern?: number;
  /** Allowed only through `--allow-outside <set.door>`; refused without it. */
  door?: boolean;
  /** The refusal is about this one name (not the chain), so its log line names the field. */
  fieldInLog: boolean;
}

export interface HostileSet {
  root: string;
  /** The folder to mount (or to run info/check/map in). */
  images: string;
  /** Files no image may reach: canary.raw, canary.vmdk, huge.raw. */
  outside: string;
  /** The folder to open with --allow-outside: door cases reach into it. */
  door: string;
  canaryRaw: string;
  cases: HostileCase[];
  /** Plain writable images that must keep working beside the hostile ones. */
  good: Array<{ name: string; pattern: number }>;
}

interface Escape {
  tag: string;
  /** Name for fields that take a raw file (qcow2 backing -F raw, data file, FLAT/VMFS extents). */
  raw: string;
  /** Name for fields that want a VMDK (SPARSE extent, parent). */
  vmdk: string;
  /** Not in the smaller per-field subsets. */
  rare?: boolean;
}

function escapes(outside: string): Escape[] {
  const longRaw = longName('../outside/canary.raw');
  const longVmdk = longName('../outside/canary.vmdk');
  return [
    { tag: 'abs', raw: `${outside}/canary.raw`, vmdk: `${outside}/canary.vmdk` },
    { tag: 'dotdot', raw: '../outside/canary.raw', vmdk: '../outside/canary.vmdk' },
    { tag: 'symlink', raw: 'link-canary.raw', vmdk: 'link-canary.vmdk' },
    { tag: 'proc-mem', raw: '/proc/self/mem', vmdk: '/proc/self/mem' },
    { tag: 'dev-zero', raw: '/dev/zero', vmdk: '/dev/zero' },
    { tag: 'etc-shadow', raw: '/etc/shadow', vmdk: '/etc/shadow', rare: true },
    { tag: 'file-prefix', raw: `file:${outside}/canary.raw`, vmdk: `file:${outside}/canary.vmdk`, rare: true },
    { tag: 'fifo', raw: 'pipe.raw', vmdk: 'pipe.vmdk' },
    { tag: 'folder', raw: 'a-folder', vmdk: 'a-folder' },
    { tag: 'huge', raw: `${outside}/huge.raw`, vmdk: `${outside}/huge.raw`, rare: true },
    // QEMU reads the name as a C string: what follows the NUL is ignored there.
    { tag: 'nul', raw: '../outside/canary.raw\0.qcow2', vmdk: '../outside/canary.vmdk\0.vmdk', rare: true },
    { tag: 'long', raw: longRaw, vmdk: longVmdk, rare: true },
  ];
}

/** A 4096-byte name that still resolves (lexically) to `suffix`: './' padding in front. */
function longName(suffix: string): string {
  const pad = 4096 - suffix.length;
  return (pad % 2 ? './/' + './'.repeat((pad - 3) / 2) : './'.repeat(pad / 2)) + suffix;
}

function qemuImg(cwd: string, ...args: string[]): string {
  return execFileSync('qemu-img', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
function qemuIo(cwd: string, file: string, format: string, ...cmds: string[]): void {
  execFileSync('qemu-io', ['-f', format, ...cmds.flatMap((c) => ['-c', c]), file], { cwd, stdio: 'pipe' });
}

// ---------------------------------------------------------------- qcow2 byte patching

interface Qcow2Names {
  backing?: string;
  backingFormat?: string;
  dataFile?: string;
}

/**
 * A copy of `template` with the backing file name (header bytes 8..19) and the header
 * extensions for backing format and external data file (with incompatible bit 2) replaced.
 */
function patchQcow2(template: Buffer, names: Qcow2Names): Buffer {
  const buf = Buffer.from(template);
  const headerLength = buf.readUInt32BE(100);
  const kept: Array<{ type: number; data: Buffer }> = [];
  for (let at = headerLength; at + 8 <= QCOW2_NAME_AT;) {
    const type = buf.readUInt32BE(at);
    const len = buf.readUInt32BE(at + 4);
    if (type === 0) break;
    if (type !== QCOW2_EXT_BACKING_FORMAT && type !== QCOW2_EXT_DATA_FILE)
      kept.push({ type, data: Buffer.from(buf.subarray(at + 8, at + 8 + len)) });
    at += 8 + Math.ceil(len / 8) * 8;
  }
  if (names.backingFormat) kept.push({ type: QCOW2_EXT_BACKING_FORMAT, data: Buffer.from(names.backingFormat) });
  if (names.dataFile !== undefined) {
    kept.push({ type: QCOW2_EXT_DATA_FILE, data: Buffer.from(names.dataFile) });
    buf.writeBigUInt64BE(buf.readBigUInt64BE(72) | QCOW2_INCOMPAT_DATA_FILE, 72);
  }
  buf.fill(0, headerLength, QCOW2_NAME_AT + 8192);
  let at = headerLength;
  for (const e of kept) {
    buf.writeUInt32BE(e.type, at);
    buf.writeUInt32BE(e.data.length, at + 4);
    e.data.copy(buf, at + 8);
    at += 8 + Math.ceil(e.data.length / 8) * 8;
  }
  if (at + 8 > QCOW2_NAME_AT) throw new Error('qcow2 header extensions do not fit before the backing name');
  if (names.backing !== undefined) {
    const name = Buffer.from(names.backing);
    name.copy(buf, QCOW2_NAME_AT);
    buf.writeBigUInt64BE(BigInt(QCOW2_NAME_AT), 8);
    buf.writeUInt32BE(name.length, 16);
  } else {
    buf.writeBigUInt64BE(0n, 8);
    buf.writeUInt32BE(0, 16);
  }
  return buf;
}

// ---------------------------------------------------------------- VMDK descriptors

function descriptorText(createType: string, extents: string[], header: string[] = [], cid = 'fffffffe', parentCid = 'ffffffff'): string {
  return [
    '# Disk DescriptorFile',
    'version=1',
    `CID=${cid}`,
    `parentCID=${parentCid}`,
    `createType="${createType}"`,
    ...header,
    '',
    '# Extent description',
    ...extents,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    'ddb.virtualHWVersion = "4"',
    'ddb.adapterType = "ide"',
    '',
  ].join('\n');
}

/** The embedded descriptor of a monolithicSparse file: where it is and its text. */
function embeddedDescriptor(buf: Buffer): { at: number; size: number; text: string } {
  const at = Number(buf.readBigUInt64LE(28)) * 512;
  const size = Number(buf.readBigUInt64LE(36)) * 512;
  const raw = buf.subarray(at, at + size);
  const end = raw.indexOf(0);
  return { at, size, text: raw.subarray(0, end < 0 ? raw.length : end).toString('latin1') };
}

function withEmbeddedDescriptor(template: Buffer, edit: (text: string) => string): Buffer {
  const buf = Buffer.from(template);
  const d = embeddedDescriptor(buf);
  const text = Buffer.from(edit(d.text), 'latin1');
  if (text.length >= d.size) throw new Error('VMDK descriptor does not fit in its sectors');
  buf.fill(0, d.at, d.at + d.size);
  text.copy(buf, d.at);
  return buf;
}

function cidOf(sparse: Buffer): string {
  const m = /^CID=([0-9a-f]+)$/m.exec(embeddedDescriptor(sparse).text);
  if (!m) throw new Error('no CID in the VMDK descriptor');
  return m[1]!;
}

/** A monolithicSparse child whose parentFileNameHint is `hint` (parentCID = `parentCid`). */
function vmdkChild(template: Buffer, hint: string, parentCid: string): Buffer {
  return withEmbeddedDescriptor(template, (t) =>
    t.replace(/^parentCID=.*$/m, `parentCID=${parentCid}`).replace(/^(createType=.*)$/m, `$1\nparentFileNameHint="${hint}"`),
  );
}

/**
 * A differencing VHD (1 MiB, nothing stored) whose relative parent locator (W2ru) and parent name
 * are `name`, written the Windows way (backslashes), expecting a parent with Unique Id `parentId`.
 */
function vhdChild(name: string, parentId: Buffer): Buffer {
  const locator = Buffer.from(name.split('/').join('\\'), 'utf16le');
  const space = Math.ceil(locator.length / 512) * 512;
  const footer = serializeFooter({
    diskType: DISK_DIFFERENCING,
    dataOffset: 512n,
    size: MIB,
    cylinders: 65535,
    heads: 16,
    sectors: 255,
    creatorApp: 'win ',
    uniqueId: Buffer.alloc(16, 0x77),
  });
  const header = serializeDynamicHeader({
    tableOffset: 1536,
    maxTableEntries: 1,
    blockSize: 2 * MIB,
    parent: { uniqueId: parentId, timestamp: 0, name, locators: [{ code: 'W2ru', space, length: locator.length, offset: 2048 }] },
  });
  return Buffer.concat([footer, header, Buffer.alloc(512, 0xff), locator, Buffer.alloc(space - locator.length), footer]);
}

// ---------------------------------------------------------------- the set

/**
 * Builds the whole set under `root` (an empty temp folder): images/, outside/, door/.
 * Takes about a second; everything is a file under `root`, so removing `root` cleans up.
 */
export function makeHostileImages(root: string): HostileSet {
  const images = path.join(root, 'images');
  const outside = path.join(root, 'outside');
  const door = path.join(root, 'door');
  for (const d of [images, outside, door, path.join(images, 'deep'), path.join(images, 'a-folder')]) fs.mkdirSync(d, { recursive: true });

  // Outside: the canary (known bytes), a VMDK holding the canary, a 1 TiB sparse file.
  const canaryRaw = path.join(outside, 'canary.raw');
  fs.writeFileSync(canaryRaw, Buffer.alloc(MIB, CANARY_MARKER));
  qemuImg(outside, 'convert', '-f', 'raw', '-O', 'vmdk', 'canary.raw', 'canary.vmdk');
  const canaryCid = cidOf(fs.readFileSync(path.join(outside, 'canary.vmdk')));
  // A VHD and a VDI holding the canary, for the parent fields of differencing VHDs and VDIs.
  qemuImg(outside, 'convert', '-f', 'raw', '-O', 'vpc', 'canary.raw', 'canary.vhd');
  qemuImg(outside, 'convert', '-f', 'raw', '-O', 'vdi', 'canary.raw', 'canary.vdi');
  const canaryVhdId = Buffer.from(fs.readFileSync(path.join(outside, 'canary.vhd')).subarray(68, 84));
  const canaryVdiUuid = Buffer.from(fs.readFileSync(path.join(outside, 'canary.vdi')).subarray(0x188, 0x198));
  fs.writeFileSync(path.join(outside, 'huge.raw'), '');
  fs.truncateSync(path.join(outside, 'huge.raw'), 2 ** 40);

  // Inside: the special files hostile names point at.
  fs.symlinkSync('../outside/canary.raw', path.join(images, 'link-canary.raw'));
  fs.symlinkSync(path.join(outside, 'canary.vmdk'), path.join(images, 'link-canary.vmdk'));
  for (const f of ['pipe.raw', 'pipe.vmdk', 'fifo.qcow2']) execFileSync('mkfifo', [path.join(images, f)]);

  // Templates: an empty 1 MiB qcow2, and one with a data cluster (for the data-file cases:
  // its L2 entry then points into whatever the data file name reaches).
  qemuImg(root, 'create', '-q', '-f', 'qcow2', 'template.qcow2', '1M');
  const qcow2Empty = fs.readFileSync(path.join(root, 'template.qcow2'));
  qemuIo(root, 'template.qcow2', 'qcow2', 'write -P 0x5a 0 64k');
  const qcow2Data = fs.readFileSync(path.join(root, 'template.qcow2'));
  fs.rmSync(path.join(root, 'template.qcow2'));
  qemuImg(root, 'create', '-q', '-f', 'vmdk', 'template.vmdk', '1M');
  const vmdkEmpty = fs.readFileSync(path.join(root, 'template.vmdk'));
  fs.rmSync(path.join(root, 'template.vmdk'));

  const cases: HostileCase[] = [];
  const put = (c: HostileCase, bytes: Buffer | string) => {
    fs.writeFileSync(path.join(images, c.name), bytes);
    cases.push(c);
  };
  const refused = (name: string, field: Field, escape: string, target: string): HostileCase => ({
    name,
    field,
    escape,
    target,
    verdict: 'refused',
    fieldInLog: escape !== 'long' && escape !== 'nul',
  });
  const flat = (type: 'FLAT' | 'VMFS', name: string) => `RW 2048 ${type} "${name}"${type === 'FLAT' ? ' 0' : ''}`;

  for (const e of escapes(outside)) {
    const common = !e.rare;
    // Every escape in the three fields people meet most; the common ones in every other field.
    put(refused(`backing-${e.tag}.qcow2`, 'backing file', e.tag, e.raw), patchQcow2(qcow2Empty, { backing: e.raw, backingFormat: 'raw' }));
    put(refused(`flat-${e.tag}.vmdk`, 'extent', e.tag, e.raw), descriptorText('monolithicFlat', [flat('FLAT', e.raw)]));
    put(refused(`parent-${e.tag}.vmdk`, 'parent', e.tag, e.vmdk), vmdkChild(vmdkEmpty, e.vmdk, canaryCid));
    if (!common) continue;
    put(refused(`datafile-${e.tag}.qcow2`, 'data file', e.tag, e.raw), patchQcow2(qcow2Data, { dataFile: e.raw }));
    put(refused(`vmfs-${e.tag}.vmdk`, 'extent', e.tag, e.raw), descriptorText('vmfs', [flat('VMFS', e.raw)]));
    put(
      refused(`sparse-extent-${e.tag}.vmdk`, 'extent', e.tag, e.vmdk),
      descriptorText('twoGbMaxExtentSparse', [`RW 2048 SPARSE "${e.vmdk}"`]),
    );
    // A VHD locator is a Windows path: absolute ones are looked up by their file name beside the
    // child, relative ones as they go; neither may leave the folder.
    const vhdName = e.vmdk.replace(/canary\.vmdk/, 'canary.vhd');
    put(refused(`vhd-parent-${e.tag}.vhd`, 'parent', e.tag, vhdName), vhdChild(vhdName, canaryVhdId));
  }
  // A VDI finds its parent by UUID among the .vdi files beside it: a symlink there that leads to
  // the outside disk with that UUID is not followed out.
  fs.symlinkSync(path.join(outside, 'canary.vdi'), path.join(images, 'link-canary.vdi'));
  const vdiChild = Buffer.from(fs.readFileSync(path.join(outside, 'canary.vdi')));
  vdiChild.writeUInt32LE(4, 0x4c); // type diff
  Buffer.alloc(16, 0x66).copy(vdiChild, 0x188); // its own UUID
  canaryVdiUuid.copy(vdiChild, 0x1a8); // the parent's: the canary's
  put(refused('vdi-parent-symlink.vdi', 'parent', 'symlink', 'link-canary.vdi'), vdiChild);
  // Without a backing format the name is probed: reading the head of a FIFO would block.
  for (const [tag, target] of [
    ['fifo', 'pipe.raw'],
    ['folder', 'a-folder'],
    ['dev-zero', '/dev/zero'],
  ] as const) {
    put(refused(`backing-probe-${tag}.qcow2`, 'backing file', tag, target), patchQcow2(qcow2Empty, { backing: target }));
  }
  // User mistakes, not attacks: a missing backing file or parent whose name has no format
  // extension. Left out all the same, with a line that says what is missing (never "a bug").
  put(refused('backing-missing.qcow2', 'backing file', 'missing', 'no-such-base'), patchQcow2(qcow2Empty, { backing: 'no-such-base' }));
  put(refused('parent-missing.vmdk', 'parent', 'missing', 'no-such-parent'), vmdkChild(vmdkEmpty, 'no-such-parent', canaryCid));
  // twoGbMaxExtentFlat: a good first extent, then one that escapes.
  fs.writeFileSync(path.join(images, 'flat2g-f001.vmdk'), Buffer.alloc(MIB / 2, 0x46));
  for (const [tag, target] of [
    ['abs', canaryRaw],
    ['dev-zero', '/dev/zero'],
    ['fifo', 'pipe.raw'],
  ] as const) {
    put(
      refused(`flat2g-${tag}.vmdk`, 'extent', tag, target),
      descriptorText('twoGbMaxExtentFlat', ['RW 1024 FLAT "flat2g-f001.vmdk" 0', `RW 1024 FLAT "${target}" 0`]),
    );
  }
  // The extent name inside a monolithicSparse descriptor: QEMU reads the file itself instead.
  for (const [tag, target] of [
    ['abs', canaryRaw],
    ['fifo', 'pipe.raw'],
    ['dev-zero', '/dev/zero'],
  ] as const) {
    put(
      { name: `embedded-${tag}.vmdk`, field: 'extent', escape: tag, target, verdict: 'either', fieldInLog: true },
      withEmbeddedDescriptor(vmdkEmpty, (t) => t.replace(/^RW (\d+) SPARSE ".*"$/m, `RW $1 SPARSE "${target}"`)),
    );
  }

  // Loops: a -> b -> a, a -> a, and the same through VMDK parents.
  const loop = (name: string, backing: string) =>
    put(
      { name, field: 'backing file', escape: 'loop', target: backing, verdict: 'refused', fieldInLog: false },
      patchQcow2(qcow2Empty, { backing, backingFormat: 'qcow2' }),
    );
  loop('loop-a.qcow2', 'loop-b.qcow2');
  loop('loop-b.qcow2', 'loop-a.qcow2');
  loop('loop-self.qcow2', 'loop-self.qcow2');
  const templateCid = cidOf(vmdkEmpty);
  for (const [a, b] of [
    ['vloop-a.vmdk', 'vloop-b.vmdk'],
    ['vloop-b.vmdk', 'vloop-a.vmdk'],
  ] as const) {
    put(
      { name: a, field: 'parent', escape: 'loop', target: b, verdict: 'refused', fieldInLog: false },
      vmdkChild(vmdkEmpty, b, templateCid),
    );
  }

  // A deep chain: deep/d00 holds data, each next one backs onto the previous. The image at
  // MAX_CHAIN_DEPTH files still opens (and reads d00's bytes); the two above it are refused.
  // The layers below are named .layer, which the mount never shows: listing the folder then
  // opens three chains, not sixty-six (their header names the format, so no extension is needed).
  const deep = path.join(images, 'deep');
  const layer = (i: number) => `d${String(i).padStart(2, '0')}.${i < MAX_CHAIN_DEPTH - 1 ? 'layer' : 'qcow2'}`;
  qemuImg(deep, 'create', '-q', '-f', 'qcow2', layer(0), '1M');
  qemuIo(deep, layer(0), 'qcow2', 'write -P 0x3d 0 64k');
  for (let i = 1; i <= MAX_CHAIN_DEPTH + 1; i++) {
    const bytes = patchQcow2(qcow2Empty, { backing: layer(i - 1), backingFormat: 'qcow2' });
    if (i < MAX_CHAIN_DEPTH - 1) fs.writeFileSync(path.join(deep, layer(i)), bytes);
    else if (i === MAX_CHAIN_DEPTH - 1)
      put({ name: `deep/${layer(i)}`, escape: 'deep chain at the limit', verdict: 'allowed', pattern: 0x3d, fieldInLog: false }, bytes);
    else put({ name: `deep/${layer(i)}`, field: 'backing file', escape: 'deep', verdict: 'refused', fieldInLog: false }, bytes);
  }

  // Names that must keep working.
  qemuImg(images, 'create', '-q', '-f', 'qcow2', 'base.qcow2', '1M');
  qemuIo(images, 'base.qcow2', 'qcow2', 'write -P 0x41 0 64k');
  put(
    { name: 'ok-relative.qcow2', field: 'backing file', escape: 'relative inside', verdict: 'allowed', pattern: 0x41, fieldInLog: false },
    patchQcow2(qcow2Empty, { backing: 'base.qcow2', backingFormat: 'qcow2' }),
  );
  put(
    { name: 'ok-absolute.qcow2', field: 'backing file', escape: 'absolute inside', verdict: 'allowed', pattern: 0x41, fieldInLog: false },
    patchQcow2(qcow2Empty, { backing: path.join(images, 'base.qcow2'), backingFormat: 'qcow2' }),
  );
  put(
    {
      name: 'ok-dotdot-inside.qcow2',
      field: 'backing file',
      escape: '../ that lands inside',
      verdict: 'allowed',
      pattern: 0x41,
      fieldInLog: false,
    },
    patchQcow2(qcow2Empty, { backing: 'a-folder/../base.qcow2', backingFormat: 'qcow2' }),
  );
  qemuImg(images, 'create', '-q', '-f', 'qcow2', '-o', 'data_file=ok-data.bin', 'ok-datafile.qcow2', '1M');
  qemuIo(images, 'ok-datafile.qcow2', 'qcow2', 'write -P 0x44 0 64k');
  cases.push({
    name: 'ok-datafile.qcow2',
    field: 'data file',
    escape: 'relative inside',
    verdict: 'allowed',
    pattern: 0x44,
    fieldInLog: false,
  });
  fs.writeFileSync(path.join(images, 'ok-flat.bin'), Buffer.alloc(MIB, 0x43));
  put(
    { name: 'ok-flat-absolute.vmdk', field: 'extent', escape: 'absolute inside', verdict: 'allowed', pattern: 0x43, fieldInLog: false },
    descriptorText('monolithicFlat', [flat('FLAT', path.join(images, 'ok-flat.bin'))]),
  );
  qemuImg(images, 'create', '-q', '-f', 'vmdk', 'vbase.vmdk', '1M');
  qemuIo(images, 'vbase.vmdk', 'vmdk', 'write -P 0x42 0 64k');
  put(
    { name: 'ok-parent.vmdk', field: 'parent', escape: 'relative inside', verdict: 'allowed', pattern: 0x42, fieldInLog: false },
    vmdkChild(vmdkEmpty, 'vbase.vmdk', cidOf(fs.readFileSync(path.join(images, 'vbase.vmdk')))),
  );

  // The door: reachable only with --allow-outside <door>; a symlink in the door that leads on
  // outside it stays refused.
  qemuImg(door, 'create', '-q', '-f', 'qcow2', 'door-base.qcow2', '1M');
  qemuIo(door, 'door-base.qcow2', 'qcow2', 'write -P 0xd0 0 64k');
  fs.writeFileSync(path.join(door, 'door-flat.raw'), Buffer.alloc(MIB, 0xd1));
  fs.symlinkSync('../outside/canary.raw', path.join(door, 'escape.raw'));
  put(
    {
      name: 'door-backing.qcow2',
      field: 'backing file',
      escape: 'door',
      target: path.join(door, 'door-base.qcow2'),
      verdict: 'allowed',
      pattern: 0xd0,
      door: true,
      fieldInLog: true,
    },
    patchQcow2(qcow2Empty, { backing: path.join(door, 'door-base.qcow2'), backingFormat: 'qcow2' }),
  );
  put(
    {
      name: 'door-flat.vmdk',
      field: 'extent',
      escape: 'door',
      target: '../door/door-flat.raw',
      verdict: 'allowed',
      pattern: 0xd1,
      door: true,
      fieldInLog: true,
    },
    descriptorText('monolithicFlat', [flat('FLAT', '../door/door-flat.raw')]),
  );
  put(
    refused('door-escape.qcow2', 'backing file', 'symlink out of the door', path.join(door, 'escape.raw')),
    patchQcow2(qcow2Empty, { backing: path.join(door, 'escape.raw'), backingFormat: 'raw' }),
  );

  // Plain writable images beside them all.
  qemuImg(images, 'create', '-q', '-f', 'qcow2', 'good.qcow2', '16M');
  qemuIo(images, 'good.qcow2', 'qcow2', 'write -P 0x61 0 1M');
  qemuImg(images, 'create', '-q', '-f', 'vmdk', 'good.vmdk', '16M');
  qemuIo(images, 'good.vmdk', 'vmdk', 'write -P 0x62 0 1M');

  return {
    root,
    images,
    outside,
    door,
    canaryRaw,
    cases,
    good: [
      { name: 'good.qcow2', pattern: 0x61 },
      { name: 'good.vmdk', pattern: 0x62 },
    ],
  };
}
