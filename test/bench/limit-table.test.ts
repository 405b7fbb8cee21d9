/**
 * The limit table (#21 item 3): per job, raw view / host file and format view / raw view from
 * the medians, the 0.9 target judged on the second, a failed run shown as failed.
 */
import { describe, expect, it } from 'vitest';
import type { FioJob } from '../../bench/lib/fio';
import type { MatrixResult, Target } from '../../bench/lib/matrix';
import { limitTable } from '../../bench/lib/report';
import { Samples } from '../../bench/lib/stats';

const target = (id: string, title: string): Target => ({ id, title, setup: () => Promise.reject(new Error('not run')) });
const host = target('host', 'host raw file');
const raw = target('rawview', 'raw view');
const qcow2 = target('ours', 'qcow2 view');
const job = (id: string, title: string): FioJob => ({ id, title, writes: false, needsFilledImage: false, args: [] });

describe('limit table', () => {
  const samples = new Samples();
  for (const [t, xs] of [
    ['host', [1000, 1200, 1100]],
    ['rawview', [500, 550, 600]],
    ['ours', [500, 520, 480]],
  ] as const)
    for (const x of xs) samples.add('seqw', t, x);
  for (const [t, x] of [
    ['host', 100],
    ['rawview', 200],
    ['ours', 100],
  ] as const)
    samples.add('randr', t, x);
  const m: MatrixResult = {
    samples,
    cpu: new Samples(),
    requestSizes: new Map(),
    unavailable: new Map(),
    failed: new Map([['gone/ours', 'fio exited 1']]),
  };
  const rows = limitTable(m, [job('seqw', 'seq write'), job('randr', 'rand read'), job('gone', 'lost job')], host, raw, qcow2, 0.9).split(
    '\n',
  );

  it('divides the medians: raw view by host file, format view by raw view, and judges the second', () => {
    expect(rows[0]).toBe('| job (MB/s) | host raw file | raw view | qcow2 view | raw view / host raw file | qcow2 view / raw view |');
    const seqw = rows.find((r) => r.startsWith('| seq write'))!;
    expect(seqw).toContain('| 0.50x |'); // 550 / 1100
    expect(seqw).toMatch(/\| 0\.91x \(≥ 0\.9: met\) \|$/); // 500 / 550
    const randr = rows.find((r) => r.startsWith('| rand read'))!;
    expect(randr).toContain('| 2.00x |'); // the view's reads come from the host page cache
    expect(randr).toMatch(/0\.50x \(≥ 0\.9: MISSED\) \|$/);
  });

  it('says which run failed', () => {
    expect(rows.find((r) => r.startsWith('| lost job'))).toContain('failed');
    expect(rows.some((r) => r.includes('lost job on qcow2 view: failed: fio exited 1'))).toBe(true);
  });
});
