import { VdiskError } from '../io/errors';

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/** Parses a size the way qemu-img does: `1G`, `512M`, `64k`, `1.5G`, plain bytes. */
export function parseSize(text: string | number, what = 'size'): number {
  if (typeof text === 'number') return text;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw VdiskError.invalid(`invalid ${what} '${text}' (use e.g. 1G, 512M, 64K or bytes)`);
  const v = Math.round(Number(m[1]) * UNITS[(m[2] ?? '').toLowerCase()]!);
  if (!Number.isSafeInteger(v)) throw VdiskError.invalid(`${what} '${text}' is too large`);
  return v;
}

/** `1 GiB`, `196 KiB`, as qemu-img prints sizes. */
export function formatSize(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0) return `${bytes} bytes`;
  return `${Number.isInteger(v) ? v : v.toFixed(v < 10 ? 3 : v < 100 ? 2 : 1).replace(/\.?0+$/, '')} ${units[i]}`;
}

/** `-o a=b,c=d` (repeatable) → { a: 'b', c: 'd' }. */
export function parseOptionList(list: string | string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of ([] as string[]).concat(list ?? [])) {
    for (const part of item.split(',')) {
      if (!part) continue;
      const eq = part.indexOf('=');
      if (eq < 0) out[part] = 'on';
      else out[part.slice(0, eq)] = part.slice(eq + 1);
    }
  }
  return out;
}
