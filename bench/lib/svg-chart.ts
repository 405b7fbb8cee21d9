/**
 * The standing at a glance (#21 item 7): an SVG drawn from a run's recorded fio matrices, one row
 * per format and job, a bar per peer for vdiskfs / peer (MB/s medians), the 1.0 and 1.5 lines
 * drawn, and the server CPU per request of vdiskfs and each peer beside. Plain SVG text, no
 * package and no service: `make bench` writes it next to the Markdown report.
 */
import { median } from './stats';

interface Recorded {
  samples?: Record<string, Record<string, number[]>>;
  cpuMicrosPerRequest?: Record<string, Record<string, number[]>>;
}

/** The peers a chart compares with, by target id, and how a bar of each is drawn. */
const PEERS: Array<{ id: string; label: string; colour: string }> = [
  { id: 'peer', label: 'qemu-storage-daemon 7.2', colour: '#4c78a8' },
  { id: 'peer10', label: 'qemu-storage-daemon 10', colour: '#f58518' },
];

const ROW = 22;
const LABEL_W = 300;
const PLOT_W = 420;
const CPU_W = 330;
/** Ratios are drawn up to this (longer bars are clipped and say their value). */
const MAX_RATIO = 6;

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/**
 * `results`: the `results` of a bench JSON (its `<format>-fio` entries are charted), `jobs`: id →
 * title in report order. Returns the SVG text, or undefined when the run has no fio matrix.
 */
export function ratioChart(
  results: Record<string, unknown>,
  jobs: ReadonlyArray<{ id: string; title: string }>,
  heading: string,
): string | undefined {
  const formats = Object.keys(results)
    .filter((k) => k.endsWith('-fio'))
    .map((k) => ({ name: k.slice(0, -'-fio'.length), data: results[k] as Recorded }))
    .filter((f) => f.data.samples);
  if (formats.length === 0) return undefined;
  const peers = PEERS.filter((p) => formats.some((f) => Object.values(f.data.samples!).some((t) => t[p.id]?.length)));
  const rows: string[] = [];
  let y = 70;
  const x0 = LABEL_W;
  const xOf = (r: number) => x0 + (Math.min(r, MAX_RATIO) / MAX_RATIO) * PLOT_W;
  for (const f of formats) {
    rows.push(`<text x="8" y="${y + 14}" font-weight="bold">${esc(f.name)}</text>`);
    y += ROW;
    for (const j of jobs) {
      const s = f.data.samples![j.id];
      if (!s?.['ours']?.length) continue;
      const ours = median(s['ours']);
      const barH = Math.max(6, Math.floor((ROW - 4) / Math.max(1, peers.length)));
      rows.push(`<text x="16" y="${y + 14}">${esc(j.title)}</text>`);
      peers.forEach((p, i) => {
        const theirs = s[p.id];
        if (!theirs?.length) return;
        const r = ours / median(theirs);
        const by = y + 2 + i * barH;
        rows.push(
          `<rect x="${x0}" y="${by}" width="${(xOf(r) - x0).toFixed(1)}" height="${barH - 1}" fill="${p.colour}"><title>${esc(`${j.title}: vdiskfs / ${p.label} = ${r.toFixed(2)}x`)}</title></rect>`,
          `<text x="${(xOf(r) + 3).toFixed(1)}" y="${by + barH - 2}" font-size="10">${r.toFixed(2)}x</text>`,
        );
      });
      const cpu = f.data.cpuMicrosPerRequest?.[j.id];
      if (cpu) {
        const c = (id: string) => (cpu[id]?.length ? median(cpu[id]).toFixed(1) : '–');
        const text = [`vdiskfs ${c('ours')}`, ...peers.map((p) => `${p.id === 'peer' ? '7.2' : '10'} ${c(p.id)}`)].join(' · ');
        rows.push(`<text x="${x0 + PLOT_W + 50}" y="${y + 14}" font-size="11">${esc(text)}</text>`);
      }
      y += ROW;
    }
    y += 8;
  }
  const width = LABEL_W + PLOT_W + 50 + CPU_W;
  const height = y + 10;
  const line = (r: number, dash: string) =>
    `<line x1="${xOf(r)}" y1="56" x2="${xOf(r)}" y2="${height - 8}" stroke="#333" stroke-dasharray="${dash}"/><text x="${xOf(r) - 8}" y="52" font-size="11">${r.toFixed(1)}</text>`;
  const legend = peers
    .map(
      (p, i) =>
        `<rect x="${x0 + i * 210}" y="22" width="12" height="12" fill="${p.colour}"/><text x="${x0 + i * 210 + 16}" y="33" font-size="11">vdiskfs / ${esc(p.label)}</text>`,
    )
    .join('');
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="8" y="16" font-size="14" font-weight="bold">${esc(heading)}</text>`,
    legend,
    `<text x="${x0 + PLOT_W + 50}" y="52" font-size="11">server CPU µs per request (median)</text>`,
    line(1, '2,2'),
    line(1.5, '6,3'),
    ...rows,
    `</svg>`,
    '',
  ].join('\n');
}
