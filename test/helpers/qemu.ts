/**
 * QEMU as the oracle: create images with qemu-img/qemu-io and read their raw view with
 * `qemu-img convert -O raw`. Every driver and integration test uses these.
 */
import { execFileSync, execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { corpusDir } from './corpus';

export function qemuImg(args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Runs qemu-io commands (`-c 'write -P 0x55 0 64k'` ...) on an image. */
export function qemuIo(image: string, commands: string[], format?: string): string {
  const args = [...(format ? ['-f', format] : []), ...commands.flatMap((c) => ['-c', c]), image];
  return execFileSync('qemu-io', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** qemu-io's output also when it exits non-zero (a failed pattern read does): for `not.toMatch(/Pattern verification failed/)`. */
export function qemuIoOutput(image: string, commands: string[], format?: string): string {
  try {
    return qemuIo(image, commands, format);
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    return `${err.stdout ?? ''}${err.stderr ?? ''} (exit non-zero)`;
  }
}

/** The raw view qemu-img gives of an image, as a file next to it. */
export function qemuRaw(image: string, out = `${image}.qemu.raw`, format?: string): string {
  qemuImg(['convert', ...(format ? ['-f', format] : []), '-O', 'raw', image, out]);
  return out;
}

export function sha256File(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(1 << 20);
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

export function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

export interface QemuCheck {
  ok: boolean;
  output: string;
  json?: Record<string, unknown>;
}

/** `qemu-img check --output=json`; ok when no corruptions, no leaks and no check errors. */
export function qemuCheck(image: string, format?: string): QemuCheck {
  const args = ['check', '--output=json', ...(format ? ['-f', format] : []), image];
  try {
    const out = execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const json = JSON.parse(out) as Record<string, unknown>;
    const bad = Number(json['corruptions'] ?? 0) + Number(json['leaks'] ?? 0) + Number(json['check-errors'] ?? 0);
    return { ok: bad === 0, output: out, json };
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    // Leaks or corruptions: qemu-img exits non-zero and still prints its JSON report.
    let json: Record<string, unknown> | undefined;
    try {
      json = JSON.parse(err.stdout ?? '') as Record<string, unknown>;
    } catch {
      json = undefined;
    }
    return { ok: false, output: `${err.stdout ?? ''}${err.stderr ?? ''}`, json };
  }
}

/** `qemu-img compare` of an image against a raw mirror: true when identical. */
export function qemuCompare(image: string, mirror: string, format?: string): { equal: boolean; output: string } {
  try {
    const out = execFileSync('qemu-img', ['compare', ...(format ? ['-f', format] : []), '-F', 'raw', image, mirror], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return { equal: true, output: out };
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    return { equal: false, output: `${err.stdout ?? ''}${err.stderr ?? ''}` };
  }
}

export function run(
  cmd: string,
  args: string[],
  opts: { timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? Number((err as NodeJS.ErrnoException).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Deterministic pseudo-random generator (mulberry32) so every storm is reproducible from its seed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The corpus as test/helpers/corpus.ts finds it (VDISKFS_CORPUS, ../shared/corpus, /work/shared/corpus). */
export const CORPUS_DIR = corpusDir() ?? path.resolve(__dirname, '../../../shared/corpus');
