import fs from 'node:fs';
import createDebug from 'debug';
import type { DriverTuning, Image, OpenOptions } from '../formats/types';
import { VdiskError } from '../io/errors';
import { Confinement } from './confine';
import { detectFormat, probeImage, readHead } from './probe';
import { driverByName } from './registry';

const log = createDebug('vdiskfs:image');

/** A chain deeper than this is a loop or a hostile image. */
export const MAX_CHAIN_DEPTH = 64;

export interface OpenImageOptions {
  writable: boolean;
  /** Per-driver knobs, handed to the driver (and to backing images) untouched. */
  tuning?: DriverTuning;
  snapshot?: string;
  /** Format named by the referring image (backing format); skips the extension check. */
  format?: string;
  /** Shown images must carry an extension that agrees with their content. */
  checkExtension?: boolean;
  warn?: (message: string) => void;
  /** Which files the image may reach (src/image/confine.ts); default: the image's own folder. */
  confinement?: Confinement;
  /** How far long work at open (a refcount rebuild) got, 0..1 (OpenOptions.progress). */
  progress?: (fraction: number, detail?: string) => void;
  /**
   * `file` is a real path already: found by listing real folders from the confinement's real
   * root, never through a symlink (a mount's listing). Skips realpath(3), a syscall per path
   * component, for each of thousands of images; the file must still lie inside the confinement.
   */
  realPath?: boolean;
}

/**
 * Opens an image and, through the driver, its whole backing chain (backing files always
 * read-only). Every name the image carries is resolved by the confinement (by default: the
 * image's own folder); this checks depth and loops (on real paths, so a loop through symlinks
 * is caught too).
 */
export async function openImage(file: string, opts: OpenImageOptions, chain: string[] = []): Promise<Image> {
  const top = chain.length === 0 ? await resolveTop(file, opts.confinement, opts.realPath) : undefined;
  const abs = top?.file ?? file;
  const confinement = top?.confinement ?? opts.confinement!;
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
  const driverOpts = driverOptions(abs, { ...opts, warn, confinement }, [...chain, abs]);
  log('open %s as %s (%s)', abs, driver.name, opts.writable ? 'rw' : 'ro');
  return driver.open(abs, driverOpts);
}

/**
 * What a driver gets to open `file` (real path) and reach what it names. Also used on its own
 * by commands that hand a file to a driver directly (check).
 */
export function driverOptions(file: string, opts: OpenImageOptions & { confinement: Confinement }, chain: string[] = [file]): OpenOptions {
  const warn = opts.warn ?? ((m: string) => log('warning: %s', m));
  return {
    writable: opts.writable,
    tuning: opts.tuning,
    snapshot: opts.snapshot,
    warn,
    ...(opts.progress ? { progress: opts.progress } : {}),
    reach: (name, field) => opts.confinement.reach(file, name, field),
    mayList: (dir) => opts.confinement.contains(dir),
    openBacking: (p, format) => openImage(p, { writable: false, format, warn, tuning: opts.tuning, confinement: opts.confinement }, chain),
  };
}

/**
 * The image a caller names is trusted as a name (symlinks followed), but it must lie inside the
 * confinement when one is given (a mount: a symlinked folder must not lead outside).
 */
async function resolveTop(
  file: string,
  given: Confinement | undefined,
  realPath = false,
): Promise<{ file: string; confinement: Confinement }> {
  if (!given) return Confinement.forFile(file);
  if (realPath) {
    if (!given.contains(file)) throw new VdiskError('EACCES', `${file} leads outside ${given.roots[0]}`);
    return { file, confinement: given };
  }
  // realpath(3) on the main thread: the name is the user's (inside the served folder), and a
  // thread-pool trip per component was a large part of opening one image of thousands.
  let real: string;
  try {
    real = fs.realpathSync.native(file);
  } catch {
    throw new VdiskError('ENOENT', `${file} does not exist`);
  }
  if (!given.contains(real)) throw new VdiskError('EACCES', `${file} leads outside ${given.roots[0]} (to ${real})`);
  return { file: real, confinement: given };
}
