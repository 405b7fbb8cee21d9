/** Test images: fresh empty ones per run, and filled templates (made once per run) for the read jobs. */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runOk } from './procs';

/** A sparse file of `imageSize` bytes whose first `dataSize` bytes are random (incompressible, never all-zero). */
export function makeFilledRaw(file: string, dataSize: number, imageSize: number): void {
  const fd = fs.openSync(file, 'w');
  try {
    const chunk = Buffer.allocUnsafe(1 << 20);
    for (let pos = 0; pos < dataSize; pos += chunk.length) {
      crypto.randomFillSync(chunk);
      const n = Math.min(chunk.length, dataSize - pos);
      fs.writeSync(fd, chunk, 0, n, pos);
    }
    fs.ftruncateSync(fd, imageSize);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export async function copySparse(from: string, to: string): Promise<void> {
  await runOk('cp', ['--sparse=always', from, to]);
}

/** The formats the benchmarks make images of, in qemu-img's names. */
export type ImageFormat = 'raw' | 'qcow2' | 'vmdk' | 'vpc' | 'vdi' | 'vhdx';

/** The file name extension a format's images carry (vpc: .vhd). */
export function extensionFor(format: ImageFormat): string {
  return format === 'vpc' ? 'vhd' : format;
}

/** A fresh empty image, exactly `qemu-img create -f <fmt> <file> <size>` (raw: a sparse file). */
export async function createEmpty(file: string, format: ImageFormat, size: number): Promise<void> {
  if (format === 'raw') {
    fs.writeFileSync(file, '');
    fs.truncateSync(file, size);
    return;
  }
  await runOk('qemu-img', ['create', '-q', '-f', format, file, String(size)]);
}

export interface Templates {
  /** Raw, data in the first `size` bytes. */
  raw: string;
  /** The same content, converted by qemu-img (so both servers read the very same file). */
  filled(format: Exclude<ImageFormat, 'raw'>): Promise<string>;
}

export function makeTemplates(dir: string, dataSize: number, imageSize: number): Templates {
  fs.mkdirSync(dir, { recursive: true });
  const raw = path.join(dir, 'filled.raw');
  makeFilledRaw(raw, dataSize, imageSize);
  const made = new Map<string, Promise<string>>();
  return {
    raw,
    filled(format) {
      let p = made.get(format);
      if (!p) {
        const out = path.join(dir, `filled.${extensionFor(format)}`);
        p = runOk('qemu-img', ['convert', '-f', 'raw', '-O', format, raw, out]).then(() => out);
        made.set(format, p);
      }
      return p;
    },
  };
}

/** The image a job starts from: a copy of the filled template for read jobs, a fresh empty one otherwise. */
export async function imageForJob(file: string, format: ImageFormat, needsFilled: boolean, t: Templates, size: number): Promise<void> {
  if (!needsFilled) return createEmpty(file, format, size);
  return copySparse(format === 'raw' ? t.raw : await t.filled(format), file);
}
