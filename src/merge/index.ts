// The public face of the merger layer (src/fs wires one RequestMerger per open image).
export { RequestMerger } from './request-merger';
export type { WriteOptions, MergerStats } from './request-merger';
export { MERGE_DEFAULTS, resolveMergerOptions } from './options';
export type { MergerOptions, ResolvedMergerOptions } from './options';
export { PAGE_SIZE } from './pages';
