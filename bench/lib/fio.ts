/** The fio jobs every section runs, and the parser of fio's JSON output. */

export interface FioJob {
  id: string;
  title: string;
  writes: boolean;
  /** Needs an image whose first `size` bytes hold data before it starts. */
  needsFilledImage: boolean;
  args: string[];
  /** fio --size of this job when it is not the run's (the second-size twin of a write job). */
  size?: number;
}

export interface JobSettings {
  /** Bytes each job covers (fio --size). */
  size: number;
  /** Seconds for the time-based random jobs. */
  runtime: number;
  /** Every write job once more at this size (0 or absent: not). */
  secondSize?: number;
  /** Upper bound in seconds for the size-based jobs (a very slow target stops early; its bandwidth stays valid). */
  maxRuntime: number;
}

const LIBAIO_QD16 = ['--ioengine=libaio', '--iodepth=16'];

/** The jobs of the issues, in table order. */
export function fioJobs(s: JobSettings): FioJob[] {
  const jobs = baseJobs(s);
  if (!s.secondSize || s.secondSize === s.size) return jobs;
  const mib = (b: number) => `${Math.round(b / 2 ** 20)} MiB`;
  // Each write job, then its twin at the second size (a small job can flatter a writer whose
  // cost shows only once the host page cache stops absorbing it).
  return jobs.flatMap((j) =>
    j.writes
      ? [
          { ...j, title: `${j.title}, ${mib(s.size)}` },
          { ...j, id: `${j.id}-${mib(s.secondSize!).replace(' ', '')}`, title: `${j.title}, ${mib(s.secondSize!)}`, size: s.secondSize },
        ]
      : [j],
  );
}

function baseJobs(s: JobSettings): FioJob[] {
  const timed = ['--time_based', `--runtime=${s.runtime}`];
  return [
    {
      id: 'seqw128k',
      title: 'seq write 128k (end_fsync)',
      writes: true,
      needsFilledImage: false,
      args: ['--rw=write', '--bs=128k', '--end_fsync=1'],
    },
    { id: 'seqw4k', title: 'seq write 4k', writes: true, needsFilledImage: false, args: ['--rw=write', '--bs=4k'] },
    {
      id: 'randw4k',
      title: `rand write 4k (${s.runtime} s)`,
      writes: true,
      needsFilledImage: false,
      args: ['--rw=randwrite', '--bs=4k', ...timed],
    },
    { id: 'seqr1m', title: 'seq read 1M O_DIRECT', writes: false, needsFilledImage: true, args: ['--rw=read', '--bs=1M', '--direct=1'] },
    {
      id: 'randr4k',
      title: `rand read 4k O_DIRECT (${s.runtime} s)`,
      writes: false,
      needsFilledImage: true,
      args: ['--rw=randread', '--bs=4k', '--direct=1', ...timed],
    },
    // Many requests in flight: the transport's concurrency (ASYNC_DIO) and its CPU per request show.
    {
      id: 'randr4kq16',
      title: `rand read 4k libaio qd16 O_DIRECT (${s.runtime} s)`,
      writes: false,
      needsFilledImage: true,
      args: ['--rw=randread', '--bs=4k', '--direct=1', ...LIBAIO_QD16, ...timed],
    },
    {
      id: 'randw4kq16',
      title: `rand write 4k libaio qd16 O_DIRECT (${s.runtime} s)`,
      writes: true,
      needsFilledImage: false,
      args: ['--rw=randwrite', '--bs=4k', '--direct=1', ...LIBAIO_QD16, ...timed],
    },
  ];
}

/** The full fio command line for one job on one file. */
export function fioArgs(job: FioJob, filename: string, s: JobSettings): string[] {
  return [
    `--name=${job.id}`,
    `--filename=${filename}`,
    `--size=${job.size ?? s.size}`,
    // psync, one request in flight, unless the job names its engine.
    ...(job.args.some((a) => a.startsWith('--ioengine=')) ? [] : ['--ioengine=psync', '--iodepth=1']),
    '--numjobs=1',
    '--randrepeat=1',
    '--output-format=json',
    ...job.args,
    ...(job.args.includes('--time_based') ? [] : [`--runtime=${s.maxRuntime}`]),
  ];
}

export interface FioResult {
  /** Bytes per second read plus written, over all jobs. */
  bytesPerSecond: number;
  /** The same in MB/s (10^6 bytes, as fio prints MB/s). */
  MBps: number;
  ioBytes: number;
  runtimeMs: number;
  /** Requests fio completed (reads plus writes): the divisor of CPU per request. */
  ios: number;
}

interface FioSide {
  bw_bytes?: number;
  bw?: number; // KiB/s
  io_bytes?: number;
  runtime?: number;
  total_ios?: number;
}

/**
 * Parses `fio --output-format=json`. fio may print warnings before the JSON ("fio: ..."),
 * so parsing starts at the first line that opens an object. A job that reports an error
 * makes the whole result an error.
 */
export function parseFioJson(text: string): FioResult {
  const start = text.search(/^\{/m);
  if (start < 0) throw new Error(`no JSON in fio output: ${text.trim().split('\n')[0] ?? ''}`);
  let doc: { jobs?: Array<{ jobname?: string; error?: number; read?: FioSide; write?: FioSide }> };
  try {
    doc = JSON.parse(text.slice(start)) as typeof doc;
  } catch (e) {
    throw new Error(`fio output is not valid JSON: ${(e as Error).message}`);
  }
  const jobs = doc.jobs ?? [];
  if (jobs.length === 0) throw new Error('fio JSON has no jobs');
  let bps = 0;
  let io = 0;
  let runtime = 0;
  let ios = 0;
  for (const j of jobs) {
    if (j.error) throw new Error(`fio job ${j.jobname ?? '?'} failed with error ${j.error}`);
    for (const side of [j.read, j.write]) {
      if (!side) continue;
      bps += side.bw_bytes ?? (side.bw ?? 0) * 1024;
      io += side.io_bytes ?? 0;
      runtime = Math.max(runtime, side.runtime ?? 0);
      ios += side.total_ios ?? 0;
    }
  }
  return { bytesPerSecond: bps, MBps: bps / 1e6, ioBytes: io, runtimeMs: runtime, ios };
}

/** qemu-img bench's result line → seconds. */
export function parseBenchSeconds(text: string): number {
  const m = /Run completed in ([0-9.]+) seconds\./.exec(text);
  if (!m) throw new Error(`no "Run completed in" line in: ${text.trim().split('\n').slice(-1)[0] ?? ''}`);
  return Number(m[1]);
}
