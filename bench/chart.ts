/**
 * Draws the SVG chart of a bench results file again without running anything:
 * `node dist/bench/chart.js bench/results/latest-qcow2-vmdk-check.json` writes latest-qcow2-vmdk-check.svg beside it.
 */
import * as fs from 'node:fs';
import { fioJobs } from './lib/fio';
import { ratioChart } from './lib/svg-chart';

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: node dist/bench/chart.js <results.json>\n');
  process.exit(2);
}
const run = JSON.parse(fs.readFileSync(file, 'utf8')) as {
  started: string;
  config: { size: number; secondSize?: number; runtime: number; quick?: boolean };
  results: Record<string, unknown>;
};
const chart = ratioChart(
  run.results,
  fioJobs({
    size: run.config.size,
    secondSize: run.config.secondSize ?? 0,
    runtime: run.config.runtime,
    maxRuntime: run.config.quick ? 20 : 60,
  }),
  `vdiskfs / qemu-storage-daemon, fio MB/s (${run.started.slice(0, 16)}Z, ${run.config.size / 2 ** 20} MiB per job)`,
);
if (!chart) {
  process.stderr.write(`${file}: no fio matrix to chart\n`);
  process.exit(1);
}
const out = file.replace(/\.json$/, '.svg');
fs.writeFileSync(out, chart);
process.stdout.write(`wrote ${out}\n`);
