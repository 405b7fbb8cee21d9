/**
 * `vdiskfs bench`: qemu-img bench's flags and output, run against our own drivers in-process
 * (no FUSE), so one command line times QEMU's block layer and ours on the same image.
 * Semantics follow qemu-img.c img_bench/bench_cb (read for facts only): COUNT requests of
 * BUFFER_SIZE bytes, DEPTH in flight, the offset advancing by STEP and wrapping at the image
 * size, an optional flush every FLUSH_INTERVAL requests (draining the queue first unless
 * --no-drain).
 */
import fs from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import { openImage, driverByName } from '../../image';
import type { Image } from '../../image';
import { VdiskError, isVdiskError } from '../../io/errors';
import { tuningFromOptions } from '../tuning';
import { formatNames } from '../format-option';

/** What -t means here. Node has no O_DIRECT with aligned buffers, so no mode bypasses the host page cache. */
export type CacheMode = 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';

export interface BenchOptions {
  file: string;
  format?: string;
  count: number;
  depth: number;
  offset: number;
  bufferSize: number;
  step: number; // 0 = bufferSize, as in qemu-img
  write: boolean;
  pattern: number;
  flushInterval: number; // 0 = none
  drainOnFlush: boolean;
  cache: CacheMode;
  noMultiAlloc: boolean;
  cacheSize?: number;
}

export interface BenchResult {
  seconds: number;
  requests: number;
  flushes: number;
}

const INT_MAX = 2 ** 31 - 1;
const SIZE_SUFFIX: Record<string, number> = { b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/** qemu's cvtnum: a number, optionally with a fraction, and a binary suffix (B, K, M, G, T, P, E; default bytes). */
export function parseSize(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe])?\s*$/i.exec(text);
  if (!m) throw VdiskError.invalid(`invalid ${what} '${text}' (a number of bytes, optionally with a K, M, G or T suffix)`);
  const mult = SIZE_SUFFIX[(m[2] ?? 'b').toLowerCase()] ?? 1;
  const value = Number(m[1]) * mult;
  if (!Number.isSafeInteger(value)) throw VdiskError.invalid(`invalid ${what} '${text}' (not a whole number of bytes, or too large)`);
  return value;
}

/** qemu_strtoul with base 0: decimal, 0x hex or 0 octal, non-negative. */
export function parseCount(text: string, what: string, max = INT_MAX): number {
  const t = text.trim();
  let value: number;
  if (/^0x[0-9a-f]+$/i.test(t)) value = parseInt(t.slice(2), 16);
  else if (/^0[0-7]+$/.test(t)) value = parseInt(t.slice(1), 8);
  else if (/^\d+$/.test(t)) value = Number(t);
  else throw VdiskError.invalid(`invalid ${what} '${text}'`);
  if (!Number.isSafeInteger(value) || value > max) throw VdiskError.invalid(`invalid ${what} '${text}' (at most ${max})`);
  return value;
}

/** qemu's cache mode names; `off` is qemu's synonym for `none`. */
export function parseCacheMode(text: string): CacheMode {
  const t = text === 'off' ? 'none' : text;
  if (t === 'none' || t === 'writeback' || t === 'writethrough' || t === 'directsync' || t === 'unsafe') return t;
  throw VdiskError.invalid(`invalid cache mode '${text}' (none, writeback, writethrough, directsync or unsafe)`);
}

/** Flush after every write, as QEMU does for cache modes without a writeback cache. */
function flushesEachWrite(cache: CacheMode): boolean {
  return cache === 'writethrough' || cache === 'directsync';
}

/** Flush once at the end, inside the timed run: stands in for QEMU's O_DIRECT, which leaves no dirty page cache behind. */
function flushesAtEnd(cache: CacheMode): boolean {
  return cache === 'none' || cache === 'directsync';
}

export function describeRun(o: BenchOptions): string[] {
  const lines = [
    `Sending ${o.count} ${o.write ? 'write' : 'read'} requests, ${o.bufferSize} bytes each, ${o.depth} in parallel ` +
      `(starting at offset ${o.offset}, step size ${o.step || o.bufferSize})`,
  ];
  if (o.flushInterval) lines.push(`Sending flush every ${o.flushInterval} requests`);
  return lines;
}

/** Runs the requests on an open image; resolves with the number of flushes issued. */
function issueRequests(image: Image, o: BenchOptions): Promise<number> {
  const step = o.step || o.bufferSize;
  const size = image.virtualSize;
  const readBuffers = o.write ? [] : Array.from({ length: o.depth }, () => Buffer.allocUnsafe(o.bufferSize));
  const freeSlots = readBuffers.slice();
  let notDone = o.count; // qemu's b->n: requests not yet completed
  let inFlight = 0;
  let inFlush = false;
  let offset = o.offset;
  let flushes = 0;
  let failed = false;

  return new Promise<number>((resolve, reject) => {
    const fail = (e: unknown, what: string) => {
      if (failed) return;
      failed = true;
      const msg = isVdiskError(e) || e instanceof Error ? e.message : String(e);
      reject(new VdiskError(isVdiskError(e) ? e.code : 'EIO', `${what} failed: ${msg}`));
    };
    const flush = (): Promise<void> => {
      flushes++;
      return image.flush();
    };

    const one = async (at: number): Promise<void> => {
      if (o.write) {
        // The driver owns what it is given, so every request gets its own buffer.
        await image.write(at, Buffer.alloc(o.bufferSize, o.pattern));
        if (flushesEachWrite(o.cache)) await flush();
      } else {
        const buf = freeSlots.pop() ?? Buffer.allocUnsafe(o.bufferSize);
        try {
          await image.read(at, buf);
        } finally {
          freeSlots.push(buf);
        }
      }
    };

    const pump = () => {
      if (failed) return;
      while (!inFlush && notDone > inFlight && inFlight < o.depth) {
        const at = offset;
        inFlight++;
        offset = (offset + step) % size;
        one(at).then(completed, (e) => fail(e, `request at offset ${at}`));
      }
      if (notDone === 0 && !inFlush) resolve(flushes);
    };

    const completed = () => {
      if (failed) return;
      const remaining = notDone - inFlight; // requests not yet issued
      notDone--;
      inFlight--;
      if (o.flushInterval && remaining % o.flushInterval === 0) {
        if (inFlight === 0 || !o.drainOnFlush) {
          if (o.drainOnFlush) {
            inFlush = true;
            flush().then(
              () => {
                inFlush = false;
                pump();
              },
              (e) => fail(e, 'flush'),
            );
          } else {
            flush().catch((e) => fail(e, 'flush'));
          }
        }
        if (o.drainOnFlush) return; // wait for the queue to drain (or the flush) before issuing more
      }
      pump();
    };

    pump();
  });
}

/** Opens the image, runs the benchmark, prints qemu-img's lines through `out`. */
export async function runBench(o: BenchOptions, out: (line: string) => void): Promise<BenchResult> {
  if (!fs.existsSync(o.file)) throw new VdiskError('ENOENT', `${o.file}: no such file`);
  if (o.format !== undefined && !driverByName(o.format)) throw VdiskError.invalid(`unknown format '${o.format}' (${formatNames()})`);
  if (!o.write && o.flushInterval) throw VdiskError.invalid('--flush-interval is only available in write tests');
  if (o.flushInterval && o.flushInterval < o.depth) throw VdiskError.invalid("flush interval can't be smaller than depth");
  if (o.depth < 1) throw VdiskError.invalid('queue depth must be at least 1');
  if (o.bufferSize < 1 || o.bufferSize > INT_MAX) throw VdiskError.invalid(`invalid buffer size ${o.bufferSize}`);

  const image = await openImage(o.file, {
    writable: o.write,
    format: o.format,
    tuning: tuningFromOptions(o.cacheSize, !o.noMultiAlloc),
    warn: (m) => process.stderr.write(`vdiskfs: warning: ${m}\n`),
  });
  try {
    if (o.write && image.readOnly) throw VdiskError.readOnly(`${o.file} opened read-only; cannot run a write test`);
    if (o.offset + o.bufferSize > image.virtualSize) {
      throw VdiskError.invalid(
        `offset ${o.offset} + buffer size ${o.bufferSize} is past the end of the image (${image.virtualSize} bytes)`,
      );
    }
    for (const line of describeRun(o)) out(line);
    const t0 = process.hrtime.bigint();
    let flushes = await issueRequests(image, o);
    if (o.write && flushesAtEnd(o.cache)) {
      await image.flush();
      flushes++;
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    out(`Run completed in ${seconds.toFixed(3)} seconds.`);
    return { seconds, requests: o.count, flushes };
  } finally {
    await image.close(); // untimed, as in qemu-img (blk_unref after the clock stops)
  }
}

interface BenchArgs {
  filename: string;
  c: string;
  d: string;
  f?: string;
  o: string;
  s: string;
  S?: string;
  t: string;
  w: boolean;
  n: boolean;
  q: boolean;
  U: boolean;
  i?: string;
  pattern: string;
  'flush-interval': string;
  drain: boolean;
  'multi-alloc': boolean;
  'cache-size'?: string;
}

export function optionsFromArgs(a: BenchArgs): BenchOptions {
  return {
    file: a.filename,
    format: a.f,
    count: parseCount(a.c, 'request count'),
    depth: parseCount(a.d, 'queue depth'),
    offset: parseSize(a.o, 'offset'),
    bufferSize: parseSize(a.s, 'buffer size'),
    step: a.S === undefined ? 0 : parseSize(a.S, 'step size'),
    write: a.w,
    pattern: parseCount(a.pattern, 'pattern byte', 0xff),
    flushInterval: parseCount(a['flush-interval'], 'flush interval'),
    drainOnFlush: a.drain,
    cache: parseCacheMode(a.t),
    noMultiAlloc: !a['multi-alloc'],
    cacheSize: a['cache-size'] === undefined ? undefined : parseSize(a['cache-size'], 'cache size'),
  };
}

const CACHE_HELP =
  'cache mode: none|off, writeback, writethrough, directsync, unsafe. vdiskfs always goes through the host ' +
  'page cache (Node has no O_DIRECT with aligned buffers). none/off: the final flush (metadata + fdatasync) is ' +
  'inside the timed run, standing in for O_DIRECT; writethrough/directsync: a flush after every write; ' +
  'writeback/unsafe: no flush until close, which is not timed (as in qemu-img)';

export const benchCommand: CommandModule<object, BenchArgs> = {
  command: 'bench <filename>',
  describe: "time COUNT requests against an image in-process, no FUSE (qemu-img bench's flags and output)",
  builder: (y: Argv<object>) =>
    y
      .positional('filename', { type: 'string', demandOption: true, describe: 'image file' })
      .option('c', { type: 'string', default: '75000', describe: 'number of requests (count)' })
      .option('d', { type: 'string', default: '64', describe: 'requests in flight at once (depth)' })
      .option('f', { type: 'string', describe: 'image format (qcow2, vmdk, vhdx, vpc, vdi, raw); probed from the content when omitted' })
      .option('o', { type: 'string', default: '0', describe: 'offset of the first request (K/M/G suffixes)' })
      .option('s', { type: 'string', default: '4096', describe: 'buffer size of each request (K/M/G suffixes)' })
      .option('S', { type: 'string', describe: 'step between request offsets (default: the buffer size); offsets wrap at the image size' })
      .option('t', { type: 'string', default: 'writeback', describe: CACHE_HELP })
      .option('w', { type: 'boolean', default: false, describe: 'write test (default: read test)' })
      .option('n', { type: 'boolean', default: false, describe: 'native AIO: accepted for compatibility, no effect' })
      .option('i', { type: 'string', describe: 'AIO backend (threads, native, io_uring): accepted for compatibility, no effect' })
      .option('q', {
        type: 'boolean',
        default: false,
        describe: 'quiet: accepted for compatibility (the two result lines are always printed)',
      })
      .option('U', { type: 'boolean', default: false, describe: 'force share: accepted for compatibility, no effect' })
      .option('pattern', {
        type: 'string',
        default: '0',
        describe:
          'byte written by write tests (default 0). All-zero writes may become zero clusters/grains instead of data (qemu-img bench does not detect zeros): use a non-zero pattern to time data writes',
      })
      .option('flush-interval', {
        type: 'string',
        default: '0',
        describe: 'write tests: flush whenever the number of requests left is a multiple of this',
      })
      .option('drain', {
        type: 'boolean',
        default: true,
        describe: 'drain the queue before each --flush-interval flush (--no-drain: flush without draining)',
      })
      .option('multi-alloc', {
        type: 'boolean',
        default: true,
        describe: "VMDK: allocate all grains of a request at once (--no-multi-alloc: grain by grain, QEMU's way)",
      })
      .option('cache-size', { type: 'string', describe: 'qcow2 metadata cache size in bytes (K/M suffixes)' })
      .example('$0 bench -w -c 1024 -s 128K -d 1 -t none -f vmdk test.vmdk', '1024 sequential 128 KiB writes, one at a time')
      .example('$0 bench -c 10000 -d 16 -s 4K -S 1M disk.qcow2', '10000 reads of 4 KiB, 16 in flight, 1 MiB apart'),
  handler: async (args) => {
    const o = optionsFromArgs(args);
    await runBench(o, (line) => process.stdout.write(line + '\n'));
  },
};
