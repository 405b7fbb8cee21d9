import * as path from 'node:path';
import createDebug from 'debug';
import type { Image, OpenOptions } from '../formats/types';
import { VdiskError } from '../io/errors';
import { detectFormat, probeImage, readHead } from './probe';
import { driverByName } from './registry';

const log = createDebug('vdiskfs:image');

/** A chain deeper than this is a loop or a hostile image. */
export const MAX_CHAIN_DEPTH = 64;

export interface OpenImageOptions {
  writable: boolean;
  cacheSize?: number;
  noMultiAlloc?: boolean;
  snapshot?: string;
  /** Format named by the referring image (backing format); skips the extension check. */
  format?: string;
  /** Shown images must carry an extension that agrees with their content. */
  checkExtension?: boolean;
  warn?: (message: string) => void;
}

/**
 * Opens an image and, through the driver, its whole backing chain (backing files always
 * read-only). The driver resolves relative backing names; this checks depth and loops.
 */
export async function openImage(file: string, opts: OpenImageOptions, chain: string[] = []): Promise<Image> {
  const abs = path.resolve(file);
  if (chain.includes(abs)) throw VdiskError.corrupt(`backing chain loops back to ${abs}`);
  if (chain.length >= MAX_CHAIN_DEPTH) throw VdiskError.corrupt(`backing chain deeper than ${MAX_CHAIN_DEPTH} at ${abs}`);

  let driver;
  if (opts.format) {
    driver = driverByName(opts.format);
    if (!driver) throw VdiskError.unsupported(`${abs}: backing format '${opts.format}' is not supported`);
  } else if (opts.checkExtension) {
    driver = (await probeImage(abs)).driver;
  } else {
    driver = detectFormat(await readHead(abs), abs);
  }
  const warn = opts.warn ?? ((m: string) => log('warning: %s', m));
  const next = [...chain, abs];
  const driverOpts: OpenOptions = {
    writable: opts.writable,
    cacheSize: opts.cacheSize,
    noMultiAlloc: opts.noMultiAlloc,
    snapshot: opts.snapshot,
    warn,
    openBacking: (p, format) => openImage(p, { writable: false, format, warn, cacheSize: opts.cacheSize }, next),
  };
  log('open %s as %s (%s)', abs, driver.name, opts.writable ? 'rw' : 'ro');
  return driver.open(abs, driverOpts);
}
