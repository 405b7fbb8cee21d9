/**
 * Page geometry of the merger. Every request a driver sees is a whole number of pages, except
 * one that ends exactly at the end of the virtual disk (DESIGN.md, merger rule 1).
 */
export const PAGE_SIZE = 4096;

export function pageDown(v: number): number {
  return v - (v % PAGE_SIZE);
}

export function pageUp(v: number): number {
  const r = v % PAGE_SIZE;
  return r === 0 ? v : v + PAGE_SIZE - r;
}

/** The driver range [start, end) that covers byte range [from, to): whole pages, clipped at the disk end. */
export function pageSpan(from: number, to: number, diskSize: number): { start: number; end: number } {
  return { start: pageDown(from), end: Math.min(pageUp(to), diskSize) };
}

/** The page holding byte `at`, clipped at the disk end (the last page may be short). */
export function pageAt(at: number, diskSize: number): { start: number; end: number } {
  const start = pageDown(at);
  return { start, end: Math.min(start + PAGE_SIZE, diskSize) };
}
