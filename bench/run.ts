/**
 * `make bench`: every benchmark of vdiskfs in one run on one machine, printed as Markdown and
 * written to bench/results/latest.md (raw samples in latest.json). Settings: bench/README.md.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { checkAborted, cleanupAll, installSignalHandlers, isAborted, onCleanup } from './lib/cleanup';
import { configFromEnv } from './lib/config';
import type { BenchConfig } from './lib/config';
import { fioJobs } from './lib/fio';
import { makeTemplates } from './lib/images';
import { describeMachine, machineInfo } from './lib/machine';
import { removeDir } from './lib/matrix';
import { RESULTS_DIR, VDISKFS_MAIN } from './lib/paths';
import { ratioChart } from './lib/svg-chart';
import type { SectionContext } from './sections/context';
import { foundationSection } from './sections/foundation';
import { qcow2Section } from './sections/qcow2';
import { vmdkSection } from './sections/vmdk';
import { formatsSection } from './sections/formats';
import { checkSection } from './sections/check';
import { sparseCopySection } from './sections/sparse-copy';
import { manyImagesSection } from './sections/many-images';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

/** Refuses to start when a tool is missing or the disk is too full; returns why, or undefined. */
function preflight(cfg: BenchConfig): string | undefined {
  for (const tool of ['fio', 'qemu-img', 'qemu-storage-daemon']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status !== 0) return `${tool} is not installed`;
  }
  if (!fs.existsSync(cfg.baseDir)) return `BENCH_DIR ${cfg.baseDir} does not exist`;
  // Templates (raw + qcow2 + vmdk filled copies) plus up to two live images of `size` data each, plus slack.
  const need = 6 * cfg.size + 1 * GiB;
  const st = fs.statfsSync(cfg.baseDir);
  const free = st.bavail * st.bsize;
  if (free < need)
    return `only ${(free / GiB).toFixed(1)} GiB free in ${cfg.baseDir}, need ${(need / GiB).toFixed(1)} GiB (set BENCH_DIR or BENCH_SIZE)`;
  return undefined;
}

async function main(): Promise<number> {
  installSignalHandlers();
  const cfg = configFromEnv(process.env);
  const log = (line: string) => process.stderr.write(line + '\n');
  const bad = preflight(cfg);
  if (bad) {
    log(`bench: ${bad}`);
    return 1;
  }
  if (!fs.existsSync(VDISKFS_MAIN)) log(`bench: ${VDISKFS_MAIN} is missing (run npx tsc -p .): mounted targets will be not available`);

  const started = new Date();
  const loadAtStart = os.loadavg();
  const workRoot = fs.mkdtempSync(path.join(cfg.baseDir, 'vdiskfs-bench-'));
  onCleanup(`folder ${workRoot}`, () => removeDir(workRoot));
  const profileDir = path.join(RESULTS_DIR, 'profiles');
  if (cfg.profile) fs.mkdirSync(profileDir, { recursive: true });

  const machine = machineInfo(cfg.baseDir);
  const settings = { size: cfg.size, secondSize: cfg.secondSize, runtime: cfg.runtime, maxRuntime: cfg.quick ? 20 : 60 };
  log(`bench: ${cfg.quick ? 'QUICK ' : ''}run, ${cfg.repeat} repeat(s), fio size ${cfg.size / MiB} MiB, work folder ${workRoot}`);
  log(describeMachine(machine));
  log('bench: making the filled templates ...');
  const templates = makeTemplates(path.join(workRoot, 'templates'), cfg.size, cfg.imageSize);

  const recorded: Record<string, unknown> = {};
  const ctx: SectionContext = {
    cfg,
    workRoot,
    templates,
    settings,
    jobs: fioJobs(settings),
    nodeArgs: cfg.profile ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [],
    log,
    record: (name, data) => (recorded[name] = data),
  };

  const parts: string[] = [];
  const sections: [string, (c: SectionContext) => Promise<string>][] = [
    ['foundation', foundationSection],
    ['qcow2', qcow2Section],
    ['vmdk', vmdkSection],
    ['formats', formatsSection],
    ['check', checkSection],
    ['sparse-copy', sparseCopySection],
    ['many-images', manyImagesSection],
  ];
  for (const [name, fn] of sections) {
    if (!cfg.sections.has(name)) continue;
    checkAborted();
    try {
      parts.push(await fn(ctx));
    } catch (e) {
      if (isAborted()) throw e;
      const msg = `## ${name}\n\nnot available: ${(e as Error).message}`;
      log(msg);
      parts.push(msg);
    }
  }

  checkAborted();
  const load = (l: number[]) => l.map((x) => x.toFixed(1)).join(' / ');
  const loadLine = `- Load average (1/5/15 min) at start: ${load(loadAtStart)}; at the end: ${load(os.loadavg())} (other work on the machine makes figures noisy)`;
  const minutes = ((Date.now() - started.getTime()) / 60000).toFixed(1);
  const report = [
    `# vdiskfs benchmarks${cfg.quick ? ' (QUICK smoke run: small sizes, 1 repeat; not for quoting)' : ''}`,
    '',
    `Run ${started.toISOString().replace(/\.\d+Z$/, 'Z')} (${minutes} min) by \`make bench\`. fio: psync, iodepth 1 (the two qd16 jobs: libaio, iodepth 16), one job, ${cfg.size / MiB} MiB per job${cfg.secondSize ? ` (every write job also at ${cfg.secondSize / MiB} MiB)` : ''}, random jobs ${cfg.runtime} s; ` +
      `every figure is the median of ${cfg.repeat} run(s), targets interleaved, a fresh image for every run.`,
    '',
    describeMachine(machine),
    loadLine,
    '',
    parts.join('\n\n'),
    '',
  ].join('\n');
  process.stdout.write('\n' + report);
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  // A run of some sections (BENCH_ONLY) keeps the full run's latest.md: latest-<sections>.md.
  const partial = sections.some(([n]) => !cfg.sections.has(n));
  const name = cfg.quick ? 'quick' : partial ? `latest-${[...cfg.sections].join('-')}` : 'latest';
  fs.writeFileSync(path.join(RESULTS_DIR, `${name}.md`), report);
  fs.writeFileSync(
    path.join(RESULTS_DIR, `${name}.json`),
    JSON.stringify(
      { started: started.toISOString(), machine, config: { ...cfg, sections: [...cfg.sections] }, results: recorded },
      null,
      2,
    ) + '\n',
  );
  const chart = ratioChart(
    recorded,
    ctx.jobs,
    `vdiskfs / qemu-storage-daemon, fio MB/s (${started.toISOString().slice(0, 16)}Z, ${cfg.size / MiB} MiB per job)`,
  );
  if (chart) fs.writeFileSync(path.join(RESULTS_DIR, `${name}.svg`), chart);
  log(`bench: wrote ${path.join(RESULTS_DIR, `${name}.md`)}${chart ? ` and ${name}.svg` : ''}`);
  return 0;
}

void main()
  .then(
    (code) => code,
    (e) => {
      if (isAborted()) return 130;
      process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
      return 1;
    },
  )
  .then(async (code) => {
    await cleanupAll();
    process.exit(code);
  });
