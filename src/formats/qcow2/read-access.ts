/**
 * qcow2's answers to the shared data path (src/formats/data-path.ts): mapping.ts's mapFirst over
 * the cached L2 tables, synchronously; when a table is not cached, the same answer once
 * `withTables` has loaded the tables of the rest of the range (guest reads: under the image
 * lock; COW reads of a write: pinned only, the write already holds its clusters' tables).
 */
import { VdiskError } from '../../io/errors';
import type { HostFile } from '../../io/host-file';
import { DATA, type FormatAccess, type Inflater, type Mapping } from '../data-path';
import type { Image } from '../types';
import { type MapContext, mapFirst } from './mapping';
import { KIND_COMPRESSED } from './table-entry';

export type WithTables = <T>(offset: number, length: number, fn: () => T) => Promise<T>;

export interface Qcow2AccessParts {
  ctx: MapContext;
  /** Holds the compressed clusters (and the metadata). */
  file: HostFile;
  /** Holds the data clusters (the image file itself unless an external data file is used). */
  dataFile: HostFile;
  inflater: Inflater;
  backing: Image | undefined;
  withTables: WithTables;
}

export class Qcow2Access implements FormatAccess {
  readonly backing: Image | undefined;

  constructor(private readonly p: Qcow2AccessParts) {
    this.backing = p.backing;
  }

  mapSync(offset: number, length: number, out: Mapping): boolean {
    if (!mapFirst(this.p.ctx, offset, length, out)) return false;
    if (out.kind === DATA) out.file = this.p.dataFile;
    else if (out.kind === KIND_COMPRESSED) {
      out.file = this.p.file;
      out.inflater = this.p.inflater;
    }
    return true;
  }

  map(offset: number, length: number, out: Mapping): Promise<void> {
    return this.p.withTables(offset, length, () => {
      if (!this.mapSync(offset, length, out)) throw VdiskError.io(`qcow2 L2 table for guest offset ${offset} not cached after loading it`);
    });
  }
}
