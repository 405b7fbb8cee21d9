/**
 * Mapped pieces (mapping.ts) as the Image.map answer: data with its host offset and file,
 * compressed data, zeros, and unallocated ranges split where the backing image ends.
 * Neighbouring non-data extents of one kind are merged.
 */
import type { Extent } from '../types';
import type { Piece } from './mapping';
import { KIND_COMPRESSED, KIND_NORMAL, KIND_ZERO } from './table-entry';

/** `files`: host paths of compressed clusters (the image) and of data clusters (maybe a data file). */
export function toExtents(pieces: Piece[], files: { image: string; data: string }, backingSize: number | undefined): Extent[] {
  const out: Extent[] = [];
  for (const p of pieces) {
    let x: Extent;
    if (p.kind === KIND_NORMAL) x = { offset: p.guest, length: p.length, kind: 'data', hostOffset: p.host, hostFile: files.data };
    else if (p.kind === KIND_COMPRESSED) x = { offset: p.guest, length: p.length, kind: 'data', compressed: true, hostFile: files.image };
    else if (p.kind === KIND_ZERO) x = { offset: p.guest, length: p.length, kind: 'zero' };
    else {
      // Unallocated here: the backing file's bytes, or zeros past its end (or without one).
      const split = backingSize !== undefined ? Math.min(Math.max(backingSize, p.guest), p.guest + p.length) : p.guest;
      if (split > p.guest) push(out, { offset: p.guest, length: split - p.guest, kind: 'backing' });
      if (split < p.guest + p.length) push(out, { offset: split, length: p.guest + p.length - split, kind: 'unallocated' });
      continue;
    }
    push(out, x);
  }
  return out;
}

function push(out: Extent[], x: Extent): void {
  const prev = out[out.length - 1];
  if (prev && prev.kind === x.kind && prev.kind !== 'data') prev.length += x.length;
  else out.push(x);
}
