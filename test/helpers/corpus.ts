/** The real-world corpus (../shared/corpus): where it is and what its MANIFEST expects. */
import * as fs from 'node:fs';
import * as path from 'node:path';

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

export function corpusRows(dir: string): CorpusRow[] {
  const lines = fs.readFileSync(path.join(dir, 'MANIFEST.tsv'), 'utf8').split('\n').filter(Boolean);
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

export const isHash = (s: string) => /^[0-9a-f]{64}$/.test(s);
