import type { BenchConfig } from '../lib/config';
import type { FioJob, JobSettings } from '../lib/fio';
import type { Templates } from '../lib/images';

/** What every section gets from the run. */
export interface SectionContext {
  cfg: BenchConfig;
  workRoot: string;
  templates: Templates;
  settings: JobSettings;
  jobs: FioJob[];
  /** Extra node flags for our mount (profiling). */
  nodeArgs: string[];
  log: (line: string) => void;
  /** Keeps raw samples for latest.json. */
  record(name: string, data: unknown): void;
}

/** A section's Markdown (heading, table, notes). */
export type SectionReport = string;
