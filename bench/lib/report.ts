/** The Markdown tables of the report, from medians of the samples (pure: unit-tested). */
import type { FioJob } from './fio';
import type { MatrixResult, Target } from './matrix';
import { formatRate, formatRatio, markdownTable, ratio, verdict } from './stats';

function cell(m: MatrixResult, job: string, target: string): string {
  if (m.unavailable.has(target)) return 'n/a';
  if (m.failed.has(`${job}/${target}`)) return 'failed';
  return formatRate(m.samples.median(job, target));
}

function notes(m: MatrixResult, targets: readonly Target[], jobs: readonly FioJob[]): string[] {
  const out: string[] = [];
  for (const t of targets) {
    const why = m.unavailable.get(t.id);
    if (why) out.push(`- ${t.title}: not available: ${why}`);
  }
  for (const j of jobs) {
    for (const t of targets) {
      const why = m.failed.get(`${j.id}/${t.id}`);
      if (why) out.push(`- ${j.title} on ${t.title}: failed: ${why}`);
    }
  }
  return out;
}

/**
 * MB/s of every target, then each listed target's ratio to the baseline target.
 * `targetsFor(job)` gives the ratio a row must reach (undefined: no target).
 */
export function ceilingTable(
  m: MatrixResult,
  jobs: readonly FioJob[],
  targets: readonly Target[],
  base: string,
  ratioOf: readonly string[],
  goal: (job: FioJob, target: string) => number | undefined,
): string {
  const baseTitle = targets.find((t) => t.id === base)?.title ?? base;
  const headers = [
    'job (MB/s)',
    ...targets.map((t) => t.title),
    ...ratioOf.map((id) => `${targets.find((t) => t.id === id)?.title ?? id} / ${baseTitle}`),
  ];
  const rows = jobs.map((j) => [
    j.title,
    ...targets.map((t) => cell(m, j.id, t.id)),
    ...ratioOf.map((id) => {
      const r = ratio(m.samples.median(j.id, id), m.samples.median(j.id, base));
      const g = goal(j, id);
      return g === undefined ? formatRatio(r) : `${formatRatio(r)} (${verdict(r, g)})`;
    }),
  ]);
  const align = headers.map((_, i) => (i === 0 ? 'l' : 'r'));
  return [markdownTable(headers, rows, align), ...notes(m, targets, jobs)].join('\n');
}

/**
 * ours vs peer: MB/s of both, ratio ours/peer and the target it must reach. With `ceiling`
 * (the do-nothing mount, same run), also how far our FUSE stack alone could go against the peer:
 * a target above that ratio is out of reach for any driver.
 */
export function peerTable(
  m: MatrixResult,
  jobs: readonly FioJob[],
  ours: Target,
  peer: Target,
  goal: (job: FioJob) => number,
  ceiling?: Target,
  others: readonly Target[] = [],
): string {
  const headers = ['job', `${ours.title} MB/s`, `${peer.title} MB/s`, 'ours / peer', 'target'];
  if (ceiling) headers.push(`${ceiling.title} MB/s`, 'ceiling / peer');
  for (const o of others) headers.push(`${o.title} MB/s`, `${o.id} / peer`);
  const rows = jobs.map((j) => {
    const r = ratio(m.samples.median(j.id, ours.id), m.samples.median(j.id, peer.id));
    const row = [j.title, cell(m, j.id, ours.id), cell(m, j.id, peer.id), formatRatio(r), verdict(r, goal(j))];
    for (const t of ceiling ? [ceiling, ...others] : others)
      row.push(cell(m, j.id, t.id), formatRatio(ratio(m.samples.median(j.id, t.id), m.samples.median(j.id, peer.id))));
    return row;
  });
  const align = headers.map((_, i) => (i === 0 || i === 4 ? 'l' : 'r'));
  const all = [ours, peer, ...(ceiling ? [ceiling] : []), ...others];
  return [markdownTable(headers, rows, align), ...notes(m, all, jobs)].join('\n');
}

/**
 * Server CPU time per request (µs, median; /proc/PID/stat utime+stime over the fio run divided
 * by fio's request count) of each target, and the request sizes `sizesOf`'s transport saw.
 */
export function cpuTable(m: MatrixResult, jobs: readonly FioJob[], targets: readonly Target[], sizesOf: Target): string {
  const headers = ['job (server CPU µs / request)', ...targets.map((t) => t.title), `request sizes seen by ${sizesOf.title}`];
  const rows = jobs.map((j) => [
    j.title,
    ...targets.map((t) => {
      const v = m.cpu.median(j.id, t.id);
      return Number.isFinite(v) ? v.toFixed(1) : 'n/a';
    }),
    m.requestSizes.get(`${j.id}/${sizesOf.id}`) ?? 'n/a',
  ]);
  const align = headers.map((_, i) => (i === 0 || i === headers.length - 1 ? 'l' : 'r'));
  return markdownTable(headers, rows, align);
}

/**
 * The limit (#21 item 3), same run: fio on the host's raw file (no FUSE), on our view of a raw
 * image (what FUSE and our transport cost alone) and on a format's view (what the driver adds).
 * Raw view / host file is the transport's share; format view / raw view the driver's, whose
 * target is ≥ `formatGoal`.
 */
export function limitTable(
  m: MatrixResult,
  jobs: readonly FioJob[],
  host: Target,
  rawView: Target,
  formatView: Target,
  formatGoal: number,
): string {
  const headers = [
    'job (MB/s)',
    host.title,
    rawView.title,
    formatView.title,
    `${rawView.title} / ${host.title}`,
    `${formatView.title} / ${rawView.title}`,
  ];
  const rows = jobs.map((j) => {
    const med = (t: Target) => m.samples.median(j.id, t.id);
    const f = ratio(med(formatView), med(rawView));
    return [
      j.title,
      cell(m, j.id, host.id),
      cell(m, j.id, rawView.id),
      cell(m, j.id, formatView.id),
      formatRatio(ratio(med(rawView), med(host))),
      `${formatRatio(f)} (${verdict(f, formatGoal)})`,
    ];
  });
  const align = headers.map((_, i) => (i === 0 ? 'l' : 'r'));
  return [markdownTable(headers, rows, align), ...notes(m, [host, rawView, formatView], jobs)].join('\n');
}

/** Pairs of targets side by side: MB/s of each and second / first, per job (one transport against another). */
export function pairTable(m: MatrixResult, jobs: readonly FioJob[], pairs: readonly (readonly [Target, Target])[]): string {
  const headers = ['job (MB/s)', ...pairs.flatMap(([a, b]) => [a.title, b.title, `${b.id} / ${a.id}`])];
  const rows = jobs.map((j) => [
    j.title,
    ...pairs.flatMap(([a, b]) => [
      cell(m, j.id, a.id),
      cell(m, j.id, b.id),
      formatRatio(ratio(m.samples.median(j.id, b.id), m.samples.median(j.id, a.id))),
    ]),
  ]);
  const align = headers.map((_, i) => (i === 0 ? 'l' : 'r'));
  return [markdownTable(headers, rows, align), ...notes(m, pairs.flat(), jobs)].join('\n');
}
