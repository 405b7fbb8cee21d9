import type { DriverTuning } from '../image';

/**
 * The driver knobs the command line has (`--cache-size`, `--no-multi-alloc`), as the one typed
 * object every layer passes down untouched. `--cache-size` sizes each driver's table cache: the
 * qcow2 metadata cache, and the VMDK grain-table cache per sparse extent.
 */
export function tuningFromOptions(cacheSize: number | undefined, multiAlloc: boolean): DriverTuning {
  return {
    qcow2: cacheSize === undefined ? {} : { cacheSize },
    vmdk: { noMultiAlloc: !multiAlloc, ...(cacheSize === undefined ? {} : { tableCacheBytes: cacheSize }) },
  };
}
