/**
 * Host I/O failures on demand, for the failure-path tests: a HostFile's write or read is replaced
 * so that the next writes (reads) with a given tag reject as a full or failing disk would. The
 * returned function puts the original back.
 */
import type { HostFile } from '../../src/io/host-file';
import type { IoTag } from '../../src/io/counters';

export type FaultCode = 'EIO' | 'ENOSPC';

export function injectedError(code: FaultCode): Error {
  return Object.assign(new Error(`${code} (injected)`), { code });
}

/** Whether `e` is (or was caused by) an injected failure: its message says so. */
export function isInjected(e: unknown): boolean {
  return e instanceof Error && e.message.includes('(injected)');
}

interface FaultOptions {
  /** How many matching calls fail (default 1; Infinity: all until restored). */
  times?: number;
  code?: FaultCode;
}

/** The next `times` writes tagged `tag` fail with `code`; the others go through. */
export function failWrites(file: HostFile, tag: IoTag, o: FaultOptions = {}): () => void {
  const write = file.write.bind(file);
  let left = o.times ?? 1;
  file.write = (data, pos, t) => {
    if (t === tag && left > 0) {
      left--;
      return Promise.reject(injectedError(o.code ?? 'EIO'));
    }
    return write(data, pos, t);
  };
  return () => {
    file.write = write;
  };
}

/** The next `times` reads tagged `tag` fail with `code`; the others go through. */
export function failReads(file: HostFile, tag: IoTag, o: FaultOptions = {}): () => void {
  const read = file.read.bind(file);
  let left = o.times ?? 1;
  file.read = (into, pos, t) => {
    if (t === tag && left > 0) {
      left--;
      return Promise.reject(injectedError(o.code ?? 'EIO'));
    }
    return read(into, pos, t);
  };
  return () => {
    file.read = read;
  };
}

/** A host call held back: `reached` resolves once it was made, `release()` lets it go on. */
export interface Held {
  reached: Promise<void>;
  release(): void;
  /** Puts the original method back (calls made after this are not held). */
  restore(): void;
}

/** Holds the next write tagged `tag` (or the next datasync, any tag) until release(). */
export function holdNext(file: HostFile, call: 'write' | 'datasync', tag?: IoTag): Held {
  let release!: () => void;
  let reached!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const h: Held = { reached: new Promise<void>((r) => (reached = r)), release, restore: () => undefined };
  let armed = true;
  if (call === 'write') {
    const write = file.write.bind(file);
    file.write = (data, pos, t) => {
      if (!armed || t !== tag) return write(data, pos, t);
      armed = false;
      reached();
      return gate.then(() => write(data, pos, t));
    };
    h.restore = () => void (file.write = write);
  } else {
    const datasync = file.datasync.bind(file);
    file.datasync = (t) => {
      if (!armed) return datasync(t);
      armed = false;
      reached();
      return gate.then(() => datasync(t));
    };
    h.restore = () => void (file.datasync = datasync);
  }
  return h;
}
