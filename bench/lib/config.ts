/** Harness settings from the environment (see bench/README.md). */
import * as os from 'node:os';
import { parseSize } from '../../src/cli/commands/bench';

export interface BenchConfig {
  quick: boolean;
  repeat: number;
  /** fio --size of every job, bytes. */
  size: number;
  /**
   * Every write job runs a second time at this size (#21: a harness that cannot flatter, 512 MiB
   * on the 1 GiB image by default; 0: only `size`). BENCH_SECOND_SIZE sets it.
   */
  secondSize: number;
  /** Seconds of the time-based random jobs. */
  runtime: number;
  /** Virtual size of every test image (qemu-img create X 1G). */
  imageSize: number;
  /** Requests of the `qemu-img bench` comparison (-c). */
  benchCount: number;
  /** Runs per figure of that comparison: each run is well under a second, so more of them are cheap and tame the noise. */
  benchRepeat: number;
  baseDir: string;
  sections: Set<string>;
  /** Start our mount under `node --cpu-prof` (profiles land in bench/results/profiles). */
  profile: boolean;
}

export const ALL_SECTIONS = ['foundation', 'qcow2', 'vmdk', 'formats', 'check', 'sparse-copy', 'many-images'] as const;

function positiveInt(name: string, text: string | undefined, dflt: number): number {
  if (text === undefined || text === '') return dflt;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, not '${text}'`);
  return n;
}

export function configFromEnv(env: NodeJS.ProcessEnv): BenchConfig {
  const quick = env.BENCH_QUICK === '1';
  const sections = new Set(
    (env.BENCH_ONLY ?? ALL_SECTIONS.join(','))
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
  );
  for (const s of sections) {
    if (!(ALL_SECTIONS as readonly string[]).includes(s))
      throw new Error(`BENCH_ONLY: unknown section '${s}' (${ALL_SECTIONS.join(', ')})`);
  }
  return {
    quick,
    repeat: positiveInt('BENCH_REPEAT', env.BENCH_REPEAT, quick ? 1 : 3),
    size: env.BENCH_SIZE ? parseSize(env.BENCH_SIZE, 'BENCH_SIZE') : quick ? 32 * 2 ** 20 : 256 * 2 ** 20,
    secondSize:
      env.BENCH_SECOND_SIZE !== undefined
        ? env.BENCH_SECOND_SIZE === '0'
          ? 0
          : parseSize(env.BENCH_SECOND_SIZE, 'BENCH_SECOND_SIZE')
        : quick
          ? 0
          : 512 * 2 ** 20,
    runtime: positiveInt('BENCH_RUNTIME', env.BENCH_RUNTIME, quick ? 2 : 5),
    imageSize: 2 ** 30,
    benchCount: positiveInt('BENCH_COUNT', env.BENCH_COUNT, quick ? 256 : 1024),
    benchRepeat: positiveInt('BENCH_CMD_REPEAT', env.BENCH_CMD_REPEAT, quick ? 1 : 7),
    baseDir: env.BENCH_DIR || os.tmpdir(),
    sections,
    profile: env.BENCH_PROFILE === '1',
  };
}
