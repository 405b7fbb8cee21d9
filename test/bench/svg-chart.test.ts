/**
 * The bench's SVG chart (#21 item 7): a bar per format, job and peer whose length is vdiskfs /
 * peer on the drawn scale, the 1.0 and 1.5 lines, CPU per request beside, names escaped, and
 * nothing drawn for a run without a fio matrix.
 */
import { describe, expect, it } from 'vitest';
import { ratioChart } from '../../bench/lib/svg-chart';

const jobs = [
  { id: 'seqw', title: 'seq write <128k> & fsync' },
  { id: 'randr', title: 'rand read 4k' },
];
const results = {
  'qcow2-fio': {
    samples: { seqw: { ours: [300, 310, 290], peer: [100, 100, 100], peer10: [200, 200, 200] }, randr: { ours: [50], peer: [100] } },
    cpuMicrosPerRequest: { seqw: { ours: [20, 21, 22], peer: [40], peer10: [30] } },
  },
  'qcow2-bench': { anything: 1 },
};

describe('ratio chart', () => {
  const svg = ratioChart(results, jobs, 'vdiskfs vs peers')!;

  it('is one well-formed SVG document', () => {
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trim().endsWith('</svg>')).toBe(true);
    const opened = (svg.match(/<(rect|text|line|title|svg)\b/g) ?? []).length;
    const closed = (svg.match(/<\/(rect|text|line|title|svg)>|\/>/g) ?? []).length;
    expect(closed).toBe(opened);
    expect(svg).not.toMatch(/<128k>/); // names escaped
    expect(svg).toContain('seq write &lt;128k&gt; &amp; fsync');
  });

  it('draws each ratio to scale against the 1.0 and 1.5 lines', () => {
    const x = (label: string) => Number(new RegExp(`<line x1="([\\d.]+)"[^>]*/><text[^>]*>${label}</text>`).exec(svg)?.[1]);
    const one = x('1\\.0');
    const oneHalf = x('1\\.5');
    expect(oneHalf).toBeGreaterThan(one);
    const bar = (title: string) => {
      const m = new RegExp(`<rect x="([\\d.]+)" y="[\\d.]+" width="([\\d.]+)"[^>]*><title>${title}`).exec(svg);
      return { x: Number(m?.[1]), w: Number(m?.[2]) };
    };
    const b3 = bar('seq write &lt;128k&gt; &amp; fsync: vdiskfs / qemu-storage-daemon 7.2 = 3.00x');
    const b15 = bar('seq write &lt;128k&gt; &amp; fsync: vdiskfs / qemu-storage-daemon 10 = 1.50x');
    const bHalf = bar('rand read 4k: vdiskfs / qemu-storage-daemon 7.2 = 0.50x');
    expect(b15.x + b15.w).toBeCloseTo(oneHalf, 0);
    expect(b3.w).toBeCloseTo(2 * b15.w, 0);
    expect(bHalf.x + bHalf.w).toBeLessThan(one);
  });

  it('shows CPU per request beside, and nothing without a fio matrix', () => {
    expect(svg).toContain('vdiskfs 21.0 · 7.2 40.0 · 10 30.0');
    expect(ratioChart({ 'qcow2-bench': {} }, jobs, 'x')).toBeUndefined();
  });
});
