/** The real-world corpus (../shared/corpus): where it is and what its MANIFEST expects. */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { driverByName } from '../../src/image/registry';

export interface CorpusRow {
  file: string;
  format: string;
  virtualSize: string;
  expect: string;
  notes: string;
}

export function corpusDir(): string | undefined {
  const candidates = [process.env.VDISKFS_CORPUS, path.resolve(__dirname, '../../../shared/corpus'), '/work/shared/corpus'];
  return candidates.find((c): c is string => !!c && fs.existsSync(path.join(c, 'MANIFEST.tsv')));
}

function readManifest(file: string): CorpusRow[] {
  if (!fs.existsSync(file)) return [];
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
  const header = lines[0]!.split('\t');
  const col = (name: string) => header.indexOf(name);
  return lines.slice(1).map((l) => {
    const f = l.split('\t');
    return {
      file: f[col('file')]!,
      format: f[col('format_subformat')]!,
      virtualSize: f[col('virtual_size')]!,
      expect: f[col('sha256_raw_qemu')]!,
      notes: f[col('notes')] ?? '',
    };
  });
}

/**
 * MANIFEST.tsv, plus the rows of MANIFEST-formats.tsv (VHD, VHDX, VDI: kept apart by the corpus
 * so older checkouts passed) whose format vdiskfs reads: the corpus is shared/ input, read-only here.
 */
export function corpusRows(dir: string): CorpusRow[] {
  const formats = readManifest(path.join(dir, 'MANIFEST-formats.tsv')).filter((r) => driverByName(r.format.split('/')[0]!) !== undefined);
  return [...readManifest(path.join(dir, 'MANIFEST.tsv')), ...formats];
}

/**
 * Files the corpus stores compressed only (`x.vhdx.gz`, `x.vhdx.bz2`: their row names `x.vhdx`),
 * unpacked beside themselves in a writable copy of the corpus.
 */
export function unpackCompressed(copy: string, rows: CorpusRow[]): void {
  for (const r of rows) {
    const target = path.join(copy, r.file);
    if (fs.existsSync(target)) continue;
    for (const [ext, tool] of [
      ['.gz', 'gunzip'],
      ['.bz2', 'bunzip2'],
    ] as const) {
      if (!fs.existsSync(target + ext)) continue;
      execFileSync('sh', ['-c', `${tool} -c "$1" | cp --sparse=always /dev/stdin "$2"`, 'sh', target + ext, target]);
      break;
    }
  }
}

export const isHash = (s: string) => /^[0-9a-f]{64}$/.test(s);
