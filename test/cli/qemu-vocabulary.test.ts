/**
 * Where vdiskfs and qemu-img do the same job they speak the same language: the real binary and
 * qemu-img 7.2 run on the same images, and their answers are compared field by field.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CLI, tempDir } from '../helpers/mount';
import { qemuIo } from '../helpers/qemu';
import { expectOneLineError, qemuImgIn, vdiskfs } from './cli-helpers';

let dir: { path: string; cleanup(): Promise<void> };
let cwd = '';
const img = (...a: string[]) => execFileSync('qemu-img', a, { cwd, stdio: 'pipe' });
const json = (s: string) => JSON.parse(s) as unknown;
const sortedLines = (s: string) => s.split('\n').filter(Boolean).sort();

beforeEach(async () => {
  dir = await tempDir();
  cwd = dir.path;
  // A two-layer qcow2 chain with data, zero and unallocated clusters on both layers.
  img('create', '-q', '-f', 'qcow2', 'base.qcow2', '64M');
  qemuIo(path.join(cwd, 'base.qcow2'), ['write -P 1 0 64k', 'write -z 128k 64k', 'write -P 2 1M 128k']);
  img('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2');
  qemuIo(path.join(cwd, 'top.qcow2'), ['write -P 3 64k 64k', 'write -z 1M 64k']);
  img('create', '-q', '-f', 'vmdk', 'mono.vmdk', '64M');
  img('create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', 'split.vmdk', '3G');
  img('create', '-q', '-f', 'vmdk', '-o', 'subformat=streamOptimized', 'stream.vmdk', '64M');
  img('create', '-q', '-f', 'vmdk', '-b', 'mono.vmdk', '-F', 'vmdk', 'child.vmdk');
  img('create', '-q', '-f', 'raw', 'disk.img', '1M');
});
afterEach(() => dir.cleanup());

describe('info', () => {
  const images = ['base.qcow2', 'top.qcow2', 'mono.vmdk', 'split.vmdk', 'stream.vmdk', 'child.vmdk'];
  it('--output=json equals qemu-img, filename as given (also through ../ and absolute names)', () => {
    for (const f of [...images, path.join(cwd, 'top.qcow2'), `../${path.basename(cwd)}/top.qcow2`]) {
      expect(json(vdiskfs(cwd, 'info', '--output=json', f).stdout), f).toEqual(json(qemuImgIn(cwd, 'info', '--output=json', f).stdout));
    }
  });
  it('--backing-chain: the whole chain, top first (JSON: an array), as qemu-img', () => {
    for (const f of ['top.qcow2', 'child.vmdk']) {
      const ours = vdiskfs(cwd, 'info', '--backing-chain', '--output=json', f);
      expect(json(ours.stdout), f).toEqual(json(qemuImgIn(cwd, 'info', '--backing-chain', '--output=json', f).stdout));
      expect(sortedLines(vdiskfs(cwd, 'info', '--backing-chain', f).stdout), f).toEqual(
        sortedLines(qemuImgIn(cwd, 'info', '--backing-chain', f).stdout),
      );
    }
  });
  it('the human output has qemu-img lines (key names with spaces, [i]: lists, cleanly shut down)', () => {
    img('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', 'dirty.qcow2', '16M');
    spawnSync('qemu-io', ['-c', 'write 0 64k', '-c', 'sigraise 9', 'dirty.qcow2'], { cwd });
    for (const f of [...images, 'dirty.qcow2']) {
      expect(sortedLines(vdiskfs(cwd, 'info', '-U', f).stdout), f).toEqual(sortedLines(qemuImgIn(cwd, 'info', '-U', f).stdout));
    }
    expect(vdiskfs(cwd, 'info', 'dirty.qcow2', '-U').stdout).toMatch(/^cleanly shut down: no$/m);
  });
  it('-f FMT: the named format, refused when the content is another one (as qemu-img)', () => {
    expect(vdiskfs(cwd, 'info', '-f', 'qcow2', 'base.qcow2').status).toBe(0);
    expect(json(vdiskfs(cwd, 'info', '-f', 'raw', '--output=json', 'base.qcow2').stdout)).toMatchObject({
      format: 'raw',
      'virtual-size': fs.statSync(path.join(cwd, 'base.qcow2')).size,
    });
    expect(qemuImgIn(cwd, 'info', '-f', 'vmdk', 'base.qcow2').status).toBe(1);
    expect(expectOneLineError(vdiskfs(cwd, 'info', '-f', 'vmdk', 'base.qcow2'))).toMatch(/not in vmdk format/);
  });
});

describe('check', () => {
  /** Sets the 16-bit refcount of host cluster `c` in the first refcount block. */
  const setRefcount = (f: string, c: number, v: number, grow = false) => {
    const p = path.join(cwd, f);
    const fd = fs.openSync(p, 'r+');
    const b = Buffer.alloc(8);
    fs.readSync(fd, b, 0, 8, 48);
    fs.readSync(fd, b, 0, 8, Number(b.readBigUInt64BE(0)));
    const block = Number(b.readBigUInt64BE(0));
    if (grow) fs.ftruncateSync(fd, fs.fstatSync(fd).size + 65536);
    const w = Buffer.alloc(2);
    w.writeUInt16BE(v);
    fs.writeSync(fd, w, 0, 2, block + 2 * c);
    fs.closeSync(fd);
  };
  const both = (...a: string[]) => [vdiskfs(cwd, 'check', ...a), qemuImgIn(cwd, 'check', ...a)] as const;

  it('clean images: same human lines (allocation, image end offset), same JSON, exit 0', () => {
    for (const f of ['base.qcow2', 'top.qcow2', 'mono.vmdk', 'split.vmdk']) {
      const [ours, theirs] = both(f);
      expect(ours.stdout, f).toBe(theirs.stdout);
      expect(ours.status, f).toBe(0);
      const [oj, tj] = both('--output=json', f);
      expect(json(oj.stdout), f).toEqual(json(tj.stdout));
    }
    expect(vdiskfs(cwd, 'check', 'base.qcow2').stdout).toMatch(
      /^\d+\/1024 = [\d.]+% allocated, [\d.]+% fragmented, [\d.]+% compressed clusters\nImage end offset: \d+\n$/m,
    );
  });
  it('leaks: exit 3 and the same report; corruption: exit 2 and the same report', () => {
    img('create', '-q', '-f', 'qcow2', 'leak.qcow2', '64M');
    qemuIo(path.join(cwd, 'leak.qcow2'), ['write 0 128k']);
    const clusters = fs.statSync(path.join(cwd, 'leak.qcow2')).size / 65536;
    setRefcount('leak.qcow2', clusters, 1, true);
    img('create', '-q', '-f', 'qcow2', 'bad.qcow2', '64M');
    qemuIo(path.join(cwd, 'bad.qcow2'), ['write 0 128k']);
    setRefcount('bad.qcow2', 5, 0);
    for (const [f, code] of [
      ['leak.qcow2', 3],
      ['bad.qcow2', 2],
    ] as const) {
      const [ours, theirs] = both(f);
      expect(theirs.status, f).toBe(code);
      expect(ours.status, f).toBe(code);
      expect(ours.stdout, f).toBe(theirs.stdout);
      const [oj, tj] = both('--output=json', f);
      expect(json(oj.stdout), f).toEqual(json(tj.stdout));
      expect(oj.status, f).toBe(code);
    }
    const repaired = vdiskfs(cwd, 'check', '-r', 'all', 'leak.qcow2');
    expect(repaired.status).toBe(0);
    expect(repaired.stdout).toMatch(
      /^The following inconsistencies were found and repaired:\n\n {4}1 leaked clusters\n {4}0 corruptions\n\nDouble checking the fixed image now...\nNo errors were found on the image.\n/,
    );
    expect(qemuImgIn(cwd, 'check', 'leak.qcow2').status).toBe(0);
  });
  it('a raw file: "does not support checks", exit 63, as qemu-img', () => {
    const [ours, theirs] = both('disk.img');
    expect(theirs.status).toBe(63);
    expect(ours.status).toBe(63);
    expect(ours.stderr.replace('vdiskfs:', '')).toBe(theirs.stderr.replace('qemu-img:', ''));
    expect(vdiskfs(cwd, 'check', '-f', 'raw', 'base.qcow2').status).toBe(63);
  });
  it('-f FMT names the format; details go to stderr so --output=json stays parseable', () => {
    expect(vdiskfs(cwd, 'check', '-f', 'qcow2', 'base.qcow2').status).toBe(0);
    expect(vdiskfs(cwd, 'check', '-f', 'vmdk', 'base.qcow2').status).toBe(1);
  });
  it('shows a status line on a terminal when it runs long, and nothing on a pipe', () => {
    // script(1) gives the check a terminal; the threshold is lowered so the test needs no slow image.
    const r = spawnSync('script', ['-qec', `${process.execPath} ${CLI} check base.qcow2`, '/dev/null'], {
      cwd,
      encoding: 'utf8',
      env: { ...process.env, VDISKFS_PROGRESS_AFTER_MS: '0' },
    });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/checking base\.qcow2\.\.\. \d+ s/);
    expect(r.stdout).toMatch(/No errors were found on the image/);
    expect(
      spawnSync(process.execPath, [CLI, 'check', 'base.qcow2'], {
        cwd,
        encoding: 'utf8',
        env: { ...process.env, VDISKFS_PROGRESS_AFTER_MS: '0' },
      }).stderr,
    ).toBe('');
  });
  it('map and create with preallocation show the same status line, with how far they got; map --output=json stays clean', () => {
    const onTerminal = (cmd: string) =>
      spawnSync('script', ['-qec', `${process.execPath} ${CLI} ${cmd}`, '/dev/null'], {
        cwd,
        encoding: 'utf8',
        env: { ...process.env, VDISKFS_PROGRESS_AFTER_MS: '0' },
      });
    const made = onTerminal('create -f qcow2 -o preallocation=metadata progress.qcow2 64G');
    expect(made.status, made.stdout).toBe(0);
    expect(made.stdout).toMatch(/creating progress\.qcow2\.\.\. \d+ s/);
    const mapped = onTerminal('map --output=json progress.qcow2');
    expect(mapped.status, mapped.stdout).toBe(0);
    expect(mapped.stdout).toMatch(/mapping progress\.qcow2\.\.\. \d+ s/);
    // Off a terminal: JSON only, equal to qemu-img's.
    const piped = vdiskfs(cwd, 'map', '--output=json', 'progress.qcow2');
    expect(piped.stderr).toBe('');
    expect(json(piped.stdout)).toEqual(json(qemuImgIn(cwd, 'map', '--output=json', 'progress.qcow2').stdout));
    fs.rmSync(path.join(cwd, 'progress.qcow2'));
  });
});

describe('map', () => {
  it('--output=json equals qemu-img: zero clusters present, backing ranges split by the layer that answers, with offsets', () => {
    for (const f of ['base.qcow2', 'top.qcow2', 'mono.vmdk', 'child.vmdk', 'split.vmdk']) {
      expect(json(vdiskfs(cwd, 'map', '--output=json', f).stdout), f).toEqual(json(qemuImgIn(cwd, 'map', '--output=json', f).stdout));
    }
    const top = json(vdiskfs(cwd, 'map', '--output=json', 'top.qcow2').stdout) as Array<Record<string, unknown>>;
    expect(top).toContainEqual({ start: 0, length: 65536, depth: 1, present: true, zero: false, data: true, offset: expect.any(Number) });
    expect(top).toContainEqual({ start: 131072, length: 65536, depth: 1, present: true, zero: true, data: false });
  });
  it('holes in host files as qemu-img sees them: raw files, flat VMDK, metadata-preallocated qcow2', () => {
    const raw = path.join(cwd, 'holes.img');
    fs.writeFileSync(raw, '');
    fs.truncateSync(raw, 4 << 20);
    const fd = fs.openSync(raw, 'r+');
    fs.writeSync(fd, Buffer.alloc(128 << 10, 7), 0, 128 << 10, 192 << 10);
    fs.closeSync(fd);
    img('create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', 'flat.vmdk', '8M');
    img('create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', 'meta.qcow2', '8M');
    img('create', '-q', '-f', 'qcow2', '-o', 'preallocation=falloc', 'falloc.qcow2', '8M');
    img('create', '-q', '-f', 'qcow2', '-b', 'holes.img', '-F', 'raw', 'over-raw.qcow2');
    qemuIo(path.join(cwd, 'over-raw.qcow2'), ['write -P 1 1M 64k']);
    for (const f of ['holes.img', 'flat.vmdk', 'meta.qcow2', 'falloc.qcow2', 'over-raw.qcow2']) {
      expect(json(vdiskfs(cwd, 'map', '--output=json', f).stdout), f).toEqual(json(qemuImgIn(cwd, 'map', '--output=json', f).stdout));
    }
  });
  it('--start-offset / --max-length as qemu-img', () => {
    for (const r of [
      ['--start-offset', '64K', '--max-length', '1M'],
      ['--start-offset', '1000000'],
      ['--max-length', '200K'],
      ['--start-offset', '1M', '--max-length', '100G'],
    ]) {
      expect(json(vdiskfs(cwd, 'map', '--output=json', ...r, 'top.qcow2').stdout), r.join(' ')).toEqual(
        json(qemuImgIn(cwd, 'map', '--output=json', ...r, 'top.qcow2').stdout),
      );
    }
  });
  it("-f FMT and the human table name each range's layer as given", () => {
    const out = vdiskfs(cwd, 'map', '-f', 'qcow2', 'top.qcow2').stdout;
    expect(out).toMatch(/^0x0 +0x10000 +data +1 +0x[0-9a-f]+ +base\.qcow2$/m);
    expect(out).toMatch(/^0x10000 +0x10000 +data +0 +0x[0-9a-f]+ +top\.qcow2$/m);
  });
});

describe('create', () => {
  it('takes the format from the extension without -f', () => {
    for (const [f, fmt] of [
      ['n.qcow2', 'qcow2'],
      ['n.vmdk', 'vmdk'],
      ['n.img', 'raw'],
    ] as const) {
      expect(vdiskfs(cwd, 'create', f, '1M').status, f).toBe(0);
      expect((json(qemuImgIn(cwd, 'info', '--output=json', f).stdout) as { format: string }).format, f).toBe(fmt);
    }
  });
  it('refuses -b without -F, as qemu-img does (qcow2 and vmdk)', () => {
    for (const [fmt, base, f] of [
      ['vmdk', 'mono.vmdk', 'c1.vmdk'],
      ['qcow2', 'base.qcow2', 'c1.qcow2'],
    ] as const) {
      expect(qemuImgIn(cwd, 'create', '-f', fmt, '-b', base, `q-${f}`).status).toBe(1);
      expect(expectOneLineError(vdiskfs(cwd, 'create', '-f', fmt, '-b', base, f))).toMatch(new RegExp(`without backing format.*-F ${fmt}`));
      expect(fs.existsSync(path.join(cwd, f))).toBe(false);
      expect(vdiskfs(cwd, 'create', '-f', fmt, '-b', base, '-F', fmt, f).status).toBe(0);
    }
  });
  it('-f vmdk huge.vmdk 100T works like qemu-img: same layout, sparse, and QEMU writes and reads its last grain', () => {
    const ours = vdiskfs(cwd, 'create', '-f', 'vmdk', 'huge.vmdk', '100T');
    expect(ours.status, ours.stderr).toBe(0);
    expect(qemuImgIn(cwd, 'create', '-q', '-f', 'vmdk', 'qhuge.vmdk', '100T').status).toBe(0);
    const [a, b] = ['huge.vmdk', 'qhuge.vmdk'].map((f) => fs.statSync(path.join(cwd, f)));
    expect(a!.size).toBe(b!.size);
    expect(a!.blocks).toBeLessThan(64 * 2048); // a sparse file: under 64 MiB really used
    // (qemu-img check would read 13 GB of grain-table holes: too slow for a test.)
    const info = (f: string) =>
      json(qemuImgIn(cwd, 'info', '--output=json', f).stdout) as { 'format-specific': { data: Record<string, unknown> } };
    const [ours2, theirs2] = [info('huge.vmdk'), info('qhuge.vmdk')];
    for (const i of [ours2, theirs2]) delete i['format-specific'].data.cid;
    expect({ ...ours2, filename: '', 'actual-size': 0 }).toEqual({
      ...theirs2,
      filename: '',
      'actual-size': 0,
      'format-specific': {
        ...theirs2['format-specific'],
        data: {
          ...theirs2['format-specific'].data,
          extents: [{ ...(theirs2['format-specific'].data.extents as object[])[0], filename: 'huge.vmdk' }],
        },
      },
    });
    const last = `${100 * 2 ** 40 - 65536}`;
    qemuIo(path.join(cwd, 'huge.vmdk'), [`write -P 0x5a ${last} 64k`]);
    expect(qemuIo(path.join(cwd, 'huge.vmdk'), [`read -P 0x5a ${last} 64k`])).toMatch(/read 65536\/65536 bytes/);
  });
});
