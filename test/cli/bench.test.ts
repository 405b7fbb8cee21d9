/**
 * `vdiskfs bench` really does what it prints (content checked with qemu-img), and the pure
 * parts of the `make bench` harness (fio JSON, medians, ratios, tables) are right.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { dir as tmpDir } from 'tmp-promise';
import type { DirectoryResult } from 'tmp-promise';
import { parseCacheMode, parseCount, parseSize, runBench } from '../../src/cli/commands/bench';
import type { BenchOptions } from '../../src/cli/commands/bench';
import { openImage } from '../../src/image';
import { addIoObserver } from '../../src/io/host-file';
import { isVdiskError } from '../../src/io/errors';
import { qemuCheck, qemuImg, qemuRaw } from '../helpers/qemu';
import { fioArgs, fioJobs, parseBenchSeconds, parseFioJson } from '../../bench/lib/fio';
import { Samples, formatRate, markdownTable, median, ratio, verdict } from '../../bench/lib/stats';
import { ceilingTable, cpuTable, peerTable } from '../../bench/lib/report';
import { transportRequestSizes } from '../../bench/lib/mounts';
import type { MatrixResult, Target } from '../../bench/lib/matrix';
import { cpuModel } from '../../bench/lib/machine';
import { configFromEnv } from '../../bench/lib/config';

const MAIN = path.resolve(__dirname, '../../dist/src/cli/main.js');
const KiB = 1024;
const MiB = 1024 * 1024;

function opts(file: string, o: Partial<BenchOptions>): BenchOptions {
  return {
    file,
    count: 16,
    depth: 1,
    offset: 0,
    bufferSize: 4096,
    step: 0,
    write: false,
    pattern: 0,
    flushInterval: 0,
    drainOnFlush: true,
    cache: 'writeback',
    noMultiAlloc: false,
    ...o,
  };
}

/** What the image must hold after a write test: the pattern at every request's offset (wrapping like qemu-img). */
function expected(size: number, o: BenchOptions): Buffer {
  const model = Buffer.alloc(size);
  let at = o.offset;
  for (let i = 0; i < o.count; i++) {
    model.fill(o.pattern, at, at + o.bufferSize);
    at = (at + (o.step || o.bufferSize)) % size;
  }
  return model;
}

let tmp: DirectoryResult;
beforeEach(async () => {
  tmp = await tmpDir({ prefix: 'vdiskfs-test-bench-', unsafeCleanup: true });
});
afterEach(async () => {
  await tmp.cleanup();
});

describe('vdiskfs bench: argument parsing like qemu-img', () => {
  it('parses sizes with binary suffixes and refuses junk', () => {
    expect(parseSize('128K', 's')).toBe(128 * KiB);
    expect(parseSize('1m', 's')).toBe(MiB);
    expect(parseSize('1.5M', 's')).toBe(1.5 * MiB);
    expect(parseSize('4096', 's')).toBe(4096);
    expect(parseSize('2G', 's')).toBe(2 * 1024 * MiB);
    expect(() => parseSize('12Q', 'buffer size')).toThrow(/invalid buffer size '12Q'/);
    expect(() => parseSize('-1', 'offset')).toThrow(/invalid offset/);
    expect(() => parseSize('0.3', 's')).toThrow(/whole number/);
  });
  it('parses counts in decimal, hex and octal, with limits', () => {
    expect(parseCount('1024', 'c')).toBe(1024);
    expect(parseCount('0x10', 'c')).toBe(16);
    expect(parseCount('010', 'c')).toBe(8);
    expect(() => parseCount('256', 'pattern byte', 0xff)).toThrow(/at most 255/);
    expect(() => parseCount('ten', 'request count')).toThrow(/invalid request count/);
  });
  it('knows the cache modes (off = none)', () => {
    expect(parseCacheMode('off')).toBe('none');
    expect(parseCacheMode('directsync')).toBe('directsync');
    expect(() => parseCacheMode('fast')).toThrow(/invalid cache mode/);
  });
});

describe('vdiskfs bench on a raw image', () => {
  it("writes exactly the requests it announces, and prints qemu-img's lines", async () => {
    const file = path.join(tmp.path, 'disk.img');
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 4 * MiB);
    const o = opts(file, { write: true, count: 10, bufferSize: 64 * KiB, step: 192 * KiB, offset: 100 * KiB, pattern: 0xab, depth: 3 });
    const lines: string[] = [];
    const res = await runBench(o, (l) => lines.push(l));
    expect(lines[0]).toBe('Sending 10 write requests, 65536 bytes each, 3 in parallel (starting at offset 102400, step size 196608)');
    expect(lines[1]).toMatch(/^Run completed in \d+\.\d{3} seconds\.$/);
    expect(lines).toHaveLength(2);
    expect(res.requests).toBe(10);
    expect(fs.readFileSync(qemuRaw(file, undefined, 'raw')).equals(expected(4 * MiB, o))).toBe(true);
  });

  it('wraps the offset at the end of the image like qemu-img', async () => {
    const file = path.join(tmp.path, 'small.img');
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 1 * MiB);
    const o = opts(file, { write: true, count: 20, bufferSize: 64 * KiB, pattern: 0x11, depth: 4 });
    await runBench(o, () => {});
    expect(fs.readFileSync(file).equals(Buffer.alloc(MiB, 0x11))).toBe(true);
  });

  it('flushes every --flush-interval requests (drained and not), after every write in writethrough, once at the end for -t none', async () => {
    const file = path.join(tmp.path, 'f.img');
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 1 * MiB);
    let hostFlushes = 0;
    const stop = addIoObserver((ev) => {
      if (ev.kind === 'flush' && ev.path === path.resolve(file)) hostFlushes++;
    });
    try {
      // 64 requests, flush when 56, 48, ... 0 are left to issue: 8 flushes.
      const lines: string[] = [];
      let r = await runBench(opts(file, { write: true, count: 64, depth: 4, flushInterval: 8 }), (l) => lines.push(l));
      expect(lines[1]).toBe('Sending flush every 8 requests');
      expect(r.flushes).toBe(8);
      // --no-drain, as in qemu-img's bench_cb: while the last 4 requests complete, none is left
      // to issue (0 % 8 == 0) and nothing waits for a drain, so each of them sends a flush: 7 + 4.
      r = await runBench(opts(file, { write: true, count: 64, depth: 4, flushInterval: 8, drainOnFlush: false }), () => {});
      expect(r.flushes).toBe(11);
      r = await runBench(opts(file, { write: true, count: 12, depth: 2, cache: 'writethrough' }), () => {});
      expect(r.flushes).toBe(12);
      r = await runBench(opts(file, { write: true, count: 12, depth: 2, cache: 'none' }), () => {});
      expect(r.flushes).toBe(1);
      // Every counted flush reached the host file (close adds one more per run).
      expect(hostFlushes).toBeGreaterThanOrEqual(8 + 11 + 12 + 1);
    } finally {
      stop();
    }
  });

  it('reads without writing', async () => {
    const file = path.join(tmp.path, 'r.img');
    fs.writeFileSync(file, Buffer.alloc(256 * KiB, 7));
    const before = fs.statSync(file).mtimeMs;
    const lines: string[] = [];
    await runBench(opts(file, { count: 100, depth: 8, bufferSize: 4 * KiB }), (l) => lines.push(l));
    expect(lines[0]).toBe('Sending 100 read requests, 4096 bytes each, 8 in parallel (starting at offset 0, step size 4096)');
    expect(fs.statSync(file).mtimeMs).toBe(before);
  });

  it('refuses user mistakes with a VdiskError', async () => {
    const file = path.join(tmp.path, 'e.img');
    fs.writeFileSync(file, Buffer.alloc(64 * KiB));
    const err = async (o: BenchOptions) =>
      runBench(o, () => {}).then(
        () => undefined,
        (e: unknown) => e,
      );
    const missing = await err(opts(path.join(tmp.path, 'nope.img'), {}));
    expect(isVdiskError(missing) && missing.code).toBe('ENOENT');
    expect(String((await err(opts(file, { flushInterval: 4 }))) as Error)).toMatch(/only available in write tests/);
    expect(String((await err(opts(file, { write: true, flushInterval: 2, depth: 4 }))) as Error)).toMatch(/smaller than depth/);
    expect(String((await err(opts(file, { offset: 64 * KiB }))) as Error)).toMatch(/past the end/);
    expect(String((await err(opts(file, { format: 'vhd' }))) as Error)).toMatch(/unknown format 'vhd'/);
  });
});

describe('vdiskfs bench through the CLI', () => {
  const cli = (args: string[]) => spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', cwd: tmp.path });

  it('prints the two qemu-img lines and writes the image', () => {
    expect(fs.existsSync(MAIN)).toBe(true); // built by `make test` / `npx tsc -p .`
    qemuImg(['create', '-q', '-f', 'raw', path.join(tmp.path, 't.img'), '8M']);
    const r = cli(['bench', '-w', '-c', '16', '-s', '128K', '-d', '2', '-t', 'none', '--pattern', '0x5a', '-f', 'raw', 't.img']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const out = r.stdout.trim().split('\n');
    expect(out[0]).toBe('Sending 16 write requests, 131072 bytes each, 2 in parallel (starting at offset 0, step size 131072)');
    expect(parseBenchSeconds(r.stdout)).toBeGreaterThanOrEqual(0);
    const data = fs.readFileSync(path.join(tmp.path, 't.img'));
    expect(data.subarray(0, 2 * MiB).equals(Buffer.alloc(2 * MiB, 0x5a))).toBe(true);
    expect(data.subarray(2 * MiB).equals(Buffer.alloc(6 * MiB))).toBe(true);
  });

  it('turns a user mistake into one line on stderr and exit 1', () => {
    expect(fs.existsSync(MAIN)).toBe(true);
    for (const args of [
      ['bench', 'missing.img'],
      ['bench', '-s', '12Q', 'missing.img'],
    ]) {
      const r = cli(args);
      expect(r.status).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^vdiskfs: /);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
  });
});

/**
 * qcow2 and VMDK: the driver either works — then bench writes what it says and QEMU agrees —
 * or it is still the placeholder, which must say so (ENOTSUP "not built yet").
 */
describe.each(['qcow2', 'vmdk'] as const)('vdiskfs bench on %s', (format) => {
  async function driverWorks(file: string): Promise<boolean> {
    try {
      const img = await openImage(file, { writable: true });
      await img.close();
      return true;
    } catch (e) {
      expect(isVdiskError(e) && e.code).toBe('ENOTSUP');
      expect((e as Error).message).toMatch(/not built yet/);
      return false;
    }
  }

  for (const noMultiAlloc of format === 'vmdk' ? [false, true] : [false]) {
    it(`writes what it announces (qemu-img convert and check agree)${noMultiAlloc ? ' with --no-multi-alloc' : ''}`, async () => {
      const file = path.join(tmp.path, `t.${format}`);
      qemuImg(['create', '-q', '-f', format, file, '16M']);
      if (!(await driverWorks(file))) return;
      // Unaligned buffer size and step: partial clusters/grains on both ends of many requests.
      const o = opts(file, {
        format,
        write: true,
        count: 40,
        bufferSize: 100 * KiB + 512,
        step: 300 * KiB + 4096,
        offset: 3 * KiB,
        pattern: 0xc3,
        depth: 4,
        cache: 'none',
        noMultiAlloc,
      });
      const lines: string[] = [];
      await runBench(o, (l) => lines.push(l));
      expect(lines[0]).toContain('Sending 40 write requests, 102912 bytes each, 4 in parallel');
      const check = qemuCheck(file, format);
      expect(check).toMatchObject({ ok: true });
      expect(fs.readFileSync(qemuRaw(file, undefined, format)).equals(expected(16 * MiB, o))).toBe(true);
    });
  }
});

describe('make bench harness: pure parts', () => {
  it('median and ratio', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([])).toBeNaN();
    expect(median([NaN, 5])).toBe(5);
    expect(ratio(3, 2)).toBe(1.5);
    expect(ratio(1, 0)).toBeNaN();
    expect(verdict(1.49, 1.5)).toBe('≥ 1.5: MISSED');
    expect(verdict(2, 2)).toBe('≥ 2: met');
    expect(formatRate(1234.56)).toBe('1235');
    expect(formatRate(12.345)).toBe('12.35');
  });

  it('parses fio JSON after warnings, sums read and write, and rejects failed jobs', () => {
    const doc = (error: number) =>
      JSON.stringify(
        {
          jobs: [
            {
              jobname: 'seqw4k',
              error,
              read: { bw_bytes: 0, io_bytes: 0, runtime: 0 },
              write: { bw_bytes: 52_428_800, io_bytes: 268_435_456, runtime: 5120 },
            },
          ],
        },
        null,
        2,
      );
    const r = parseFioJson(`fio: file hash not empty on exit\n${doc(0)}\n`);
    expect(r.MBps).toBeCloseTo(52.4288, 6);
    expect(r.ioBytes).toBe(268_435_456);
    expect(r.runtimeMs).toBe(5120);
    expect(parseFioJson(JSON.stringify({ jobs: [{ read: { bw: 1, total_ios: 7 }, write: { bw: 1, total_ios: 5 } }] })).ios).toBe(12);
    // Old fio: only bw in KiB/s.
    expect(parseFioJson(JSON.stringify({ jobs: [{ read: { bw: 1000 } }] })).bytesPerSecond).toBe(1_024_000);
    expect(() => parseFioJson(doc(5))).toThrow(/failed with error 5/);
    expect(() => parseFioJson('fio: no such file')).toThrow(/no JSON/);
  });

  it("builds the seven jobs with the issues' options", () => {
    const s = { size: 256 * MiB, runtime: 5, maxRuntime: 60 };
    const jobs = fioJobs(s);
    expect(jobs.map((j) => j.id)).toEqual(['seqw128k', 'seqw4k', 'randw4k', 'seqr1m', 'randr4k', 'randr4kq16', 'randw4kq16']);
    const a = (id: string) =>
      fioArgs(
        jobs.find((j) => j.id === id)!,
        '/x',
        s,
      );
    expect(a('seqw128k')).toEqual(
      expect.arrayContaining([
        '--rw=write',
        '--bs=128k',
        '--end_fsync=1',
        `--size=${256 * MiB}`,
        '--filename=/x',
        '--output-format=json',
        '--runtime=60',
      ]),
    );
    expect(a('randw4k')).toEqual(expect.arrayContaining(['--rw=randwrite', '--bs=4k', '--time_based', '--runtime=5']));
    expect(a('randw4k')).not.toContain('--runtime=60');
    expect(a('seqr1m')).toEqual(expect.arrayContaining(['--rw=read', '--bs=1M', '--direct=1']));
    expect(a('randr4k')).toEqual(expect.arrayContaining(['--rw=randread', '--direct=1', '--ioengine=psync', '--iodepth=1']));
    for (const id of ['randr4kq16', 'randw4kq16']) {
      expect(a(id)).toEqual(expect.arrayContaining(['--bs=4k', '--direct=1', '--ioengine=libaio', '--iodepth=16', '--time_based']));
      expect(a(id)).not.toContain('--ioengine=psync');
    }
    expect(parseBenchSeconds('Sending ...\nRun completed in 1.234 seconds.\n')).toBe(1.234);
  });

  it('renders Markdown tables with medians, ratios, verdicts and notes', () => {
    expect(markdownTable(['a', 'b'], [['1', 'x|y']], ['l', 'r'])).toBe('| a | b |\n| --- | ---: |\n| 1 | x\\|y |');
    const jobs = fioJobs({ size: MiB, runtime: 1, maxRuntime: 10 }).slice(0, 2);
    const t = (id: string): Target => ({ id, title: id, setup: async () => ({ file: '', stop: async () => {} }) });
    const m: MatrixResult = {
      samples: new Samples(),
      cpu: new Samples(),
      requestSizes: new Map(),
      unavailable: new Map([['gone', 'no flag']]),
      failed: new Map([['seqw4k/ours', 'fio exited 1']]),
    };
    for (const v of [100, 300, 200]) m.samples.add('seqw128k', 'ours', v);
    for (const v of [50, 100, 150]) m.samples.add('seqw128k', 'peer', v);
    const peer = peerTable(m, jobs, t('ours'), t('peer'), () => 1.5);
    expect(peer).toContain('| seq write 128k (end_fsync) | 200.0 | 100.0 | 2.00x | ≥ 1.5: met |');
    expect(peer).toContain('| seq write 4k | failed | n/a | n/a | ≥ 1.5: not measured |');
    expect(peer).toContain('- seq write 4k on ours: failed: fio exited 1');
    for (const v of [25, 50, 75]) m.samples.add('seqw128k', 'null', v);
    const withCeiling = peerTable(m, jobs, t('ours'), t('peer'), () => 1, t('null'));
    expect(withCeiling).toContain('| seq write 128k (end_fsync) | 200.0 | 100.0 | 2.00x | ≥ 1: met | 50.00 | 0.50x |');
    const ceil = ceilingTable(m, jobs, [t('peer'), t('ours'), t('gone')], 'peer', ['ours'], (j) => (j.id === 'seqw128k' ? 0.9 : undefined));
    expect(ceil).toContain('| seq write 128k (end_fsync) | 100.0 | 200.0 | n/a | 2.00x (≥ 0.9: met) |');
    expect(ceil).toContain('- gone: not available: no flag');
    for (const v of [20, 10, 30]) m.samples.add('seqw128k', 'native', v);
    const withNative = peerTable(m, jobs, t('ours'), t('peer'), () => 1, t('null'), [t('native')]);
    expect(withNative).toContain('| seq write 128k (end_fsync) | 200.0 | 100.0 | 2.00x | ≥ 1: met | 50.00 | 0.50x | 20.00 | 0.20x |');
    for (const v of [12, 14, 13]) m.cpu.add('seqw128k', 'ours', v);
    m.requestSizes.set('seqw128k/ours', 'write 128K:2048');
    const cpu = cpuTable(m, jobs, [t('ours'), t('peer')], t('ours'));
    expect(cpu).toContain('| seq write 128k (end_fsync) | 13.0 | n/a | write 128K:2048 |');
    expect(
      transportRequestSizes('stats transport (kernel protocol):\n    read request sizes: 4K:10 1M:2\n    write request sizes: -\n'),
    ).toBe('read 4K:10 1M:2');
    expect(transportRequestSizes('no stats')).toBeUndefined();
  });

  it('reads the CPU model and the settings', () => {
    expect(cpuModel('processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n')).toBe('AMD EPYC 7B13');
    const q = configFromEnv({ BENCH_QUICK: '1' });
    expect(q).toMatchObject({ quick: true, repeat: 1, size: 32 * MiB });
    const full = configFromEnv({ BENCH_REPEAT: '5', BENCH_SIZE: '128M', BENCH_ONLY: 'vmdk' });
    expect(full).toMatchObject({ repeat: 5, size: 128 * MiB });
    expect([...full.sections]).toEqual(['vmdk']);
    expect(() => configFromEnv({ BENCH_REPEAT: '0' })).toThrow(/BENCH_REPEAT/);
    expect(() => configFromEnv({ BENCH_ONLY: 'vhd' })).toThrow(/unknown section/);
  });
});
