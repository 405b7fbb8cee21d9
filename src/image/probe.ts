import * as path from 'node:path';
import type { FormatDriver } from '../formats/types';
import { VdiskError } from '../io/errors';
import { HostFile } from '../io/host-file';
import { drivers } from './registry';

export const PROBE_BYTES = 4096;

/** The first bytes of a file, read without ever blocking on a FIFO or device (see HostFile.open). */
export async function readHead(file: string): Promise<Buffer> {
  const fh = await HostFile.open(file, false);
  try {
    const buf = Buffer.alloc(PROBE_BYTES);
    const got = await fh.read(buf, 0, 'probe');
    return buf.subarray(0, got);
  } finally {
    await fh.close();
  }
}

/** The driver whose signature the content carries (raw when none does). */
export function detectFormat(head: Buffer, file: string): FormatDriver {
  for (const d of drivers) if (d.probe(head, file)) return d;
  throw new VdiskError('ENOTSUP', `${file}: unknown format`);
}

export function extensionOf(file: string): string {
  return path.extname(file).slice(1).toLowerCase();
}

/**
 * The format of an image that is to be shown: found from the content, and the extension must
 * agree. A raw guest disk that happens to start with a qcow2 header is never opened as qcow2.
 */
export async function probeImage(file: string): Promise<{ driver: FormatDriver; head: Buffer }> {
  const head = await readHead(file);
  const driver = detectFormat(head, file);
  const ext = extensionOf(file);
  if (!driver.extensions.includes(ext)) {
    const claimed = drivers.find((d) => d.extensions.includes(ext));
    throw new VdiskError(
      'EINVAL',
      `${file}: content is ${driver.name} but the name says .${ext}${claimed ? ` (${claimed.name})` : ''}; refusing to guess`,
    );
  }
  return { driver, head };
}
