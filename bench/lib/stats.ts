/** Small pure helpers for the benchmark tables: medians, ratios, formatting. */

/** Median of the samples (mean of the middle two for an even count); NaN when there are none. */
export function median(samples: readonly number[]): number {
  const xs = samples.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (xs.length === 0) return NaN;
  const mid = xs.length >> 1;
  return xs.length % 2 === 1 ? xs[mid]! : (xs[mid - 1]! + xs[mid]!) / 2;
}

/** a / b, NaN when either side is missing or b is 0. */
export function ratio(a: number, b: number): number {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return NaN;
  return a / b;
}

/** MB/s with a precision that suits its size: 1234, 123.4, 12.34 ... */
export function formatRate(v: number): string {
  if (!Number.isFinite(v)) return 'n/a';
  if (v >= 1000) return v.toFixed(0);
  if (v >= 100) return v.toFixed(1);
  return v.toFixed(2);
}

export function formatRatio(v: number): string {
  return Number.isFinite(v) ? `${v.toFixed(2)}x` : 'n/a';
}

export function formatSeconds(v: number): string {
  return Number.isFinite(v) ? `${v.toFixed(3)} s` : 'n/a';
}

/** "1.52x (≥ 1.5: met)" style verdict for a ratio against its target. */
export function verdict(value: number, target: number): string {
  if (!Number.isFinite(value)) return `≥ ${target}: not measured`;
  return `≥ ${target}: ${value >= target ? 'met' : 'MISSED'}`;
}

/** A GitHub-flavoured Markdown table; cells have their pipes escaped. */
export function markdownTable(headers: readonly string[], rows: readonly (readonly string[])[], align?: readonly ('l' | 'r')[]): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  const sep = headers.map((_, i) => ((align?.[i] ?? 'l') === 'r' ? '---:' : '---'));
  const line = (cells: readonly string[]) => `| ${cells.map(esc).join(' | ')} |`;
  return [line(headers), `|${sep.map((s) => ` ${s} `).join('|')}|`, ...rows.map(line)].join('\n');
}

/** Samples keyed by (job, target); keeps insertion order of both for stable tables. */
export class Samples {
  private readonly data = new Map<string, Map<string, number[]>>();

  add(job: string, target: string, value: number): void {
    let byTarget = this.data.get(job);
    if (!byTarget) this.data.set(job, (byTarget = new Map<string, number[]>()));
    let xs = byTarget.get(target);
    if (!xs) byTarget.set(target, (xs = []));
    xs.push(value);
  }

  get(job: string, target: string): number[] {
    return this.data.get(job)?.get(target) ?? [];
  }

  median(job: string, target: string): number {
    return median(this.get(job, target));
  }

  toJSON(): Record<string, Record<string, number[]>> {
    const out: Record<string, Record<string, number[]>> = {};
    for (const [job, byTarget] of this.data) out[job] = Object.fromEntries(byTarget);
    return out;
  }
}
