/**
 * Top self-time functions of a V8 .cpuprofile (from `node --cpu-prof`, e.g. BENCH_PROFILE=1),
 * so a missed target can be explained with numbers: `node dist/bench/lib/profile-summary.js X.cpuprofile [N]`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface Row {
  name: string;
  selfMs: number;
  share: number;
}

/** Self time per function (name + file:line), biggest first; `(idle)` is kept so busy share is visible. */
export function summarize(p: Profile, top = 25): { totalMs: number; rows: Row[] } {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  p.samples.forEach((id, i) => {
    const dt = (p.timeDeltas[i] ?? 0) / 1000;
    total += dt;
    const n = byId.get(id);
    if (!n) return;
    const f = n.callFrame;
    const where = f.url ? `${path.basename(f.url)}:${f.lineNumber + 1}` : '';
    const name = `${f.functionName || '(anonymous)'}${where ? ` ${where}` : ''}`;
    self.set(name, (self.get(name) ?? 0) + dt);
  });
  const rows = [...self.entries()]
    .map(([name, ms]) => ({ name, selfMs: ms, share: total ? ms / total : 0 }))
    .sort((a, b) => b.selfMs - a.selfMs)
    .slice(0, top);
  return { totalMs: total, rows };
}

if (require.main === module) {
  const [file, n] = process.argv.slice(2);
  if (!file) {
    process.stderr.write('usage: profile-summary <file.cpuprofile> [top]\n');
    process.exit(1);
  }
  const { totalMs, rows } = summarize(JSON.parse(fs.readFileSync(file, 'utf8')) as Profile, Number(n ?? 25));
  process.stdout.write(`${(totalMs / 1000).toFixed(1)} s sampled\n`);
  for (const r of rows)
    process.stdout.write(`${(r.share * 100).toFixed(1).padStart(5)}%  ${r.selfMs.toFixed(0).padStart(6)} ms  ${r.name}\n`);
}
