/**
 * How the kernel adapter answers (split out of kernel-adapter.ts, which decodes requests and
 * routes them to the operations core): replies encoded into one shared buffer and written in the
 * same synchronous step, core calls run and answered when they settle, errors mapped to errnos
 * and logged, and the requests still waiting for the core (INTERRUPT names them; the session loop
 * sleeps off-thread while any wait).
 */
import createDebug from 'debug';
import { errno, toErrno } from '../../fs/errno';
import { settle } from '../../io/errors';
import { encodeOutHeader, OUT_HEADER_SIZE, type RequestHeader } from './protocol/header';
import { expectsReply, opName } from './protocol/opcodes';

const log = createDebug('vdiskfs:fuse');

/** Where replies go: the session loop writes them to /dev/fuse. */
export interface ReplySink {
  send(buf: Buffer, len: number): void;
}

export class Replies {
  /** Shared by replies that are encoded and written in one synchronous step. */
  readonly small = Buffer.alloc(OUT_HEADER_SIZE + 8192);
  /** Requests handed to the core and not answered yet, by unique id (INTERRUPT names them). */
  private readonly inflight = new Set<number>();

  constructor(
    private readonly sink: ReplySink,
    /** The path of a node id, for log lines. */
    private readonly pathOfNode: (nodeid: number) => string | undefined,
  ) {}

  /** Requests still waiting for the core. */
  get pending(): number {
    return this.inflight.size;
  }

  /** True while request `unique` waits for the core. */
  waiting(unique: number): boolean {
    return this.inflight.has(unique);
  }

  /** Marks request `unique` as waiting for the core (begin) or answered (end). */
  begin(unique: number): void {
    this.inflight.add(unique);
  }

  end(unique: number): void {
    this.inflight.delete(unique);
  }

  /** Writes a reply encoded elsewhere (header included). */
  send(buf: Buffer, len: number): void {
    this.sink.send(buf, len);
  }

  /**
   * Runs a core call and answers with `encode`d value (into the shared reply buffer, written at
   * once), or with the error. `custom` replaces the standard reply when the answer is built elsewhere.
   */
  run<T>(h: RequestHeader, fn: () => Promise<T>, encode: (b: Buffer, off: number, v: T) => number, custom?: (v: T) => void): void {
    const p = settle(fn);
    this.inflight.add(h.unique);
    p.then(
      (v) => {
        this.inflight.delete(h.unique);
        if (custom) custom(v);
        else this.reply(h, (b, o) => encode(b, o, v));
      },
      (e) => {
        this.inflight.delete(h.unique);
        this.fail(h, e);
      },
    );
  }

  /** Encodes a body into the shared buffer after the header and writes the reply. */
  reply(h: RequestHeader, body: (b: Buffer, off: number) => number): void {
    const len = OUT_HEADER_SIZE + body(this.small, OUT_HEADER_SIZE);
    encodeOutHeader(this.small, len, 0, h.unique);
    this.sink.send(this.small, len);
  }

  error(h: RequestHeader, negErrno: number): void {
    encodeOutHeader(this.small, OUT_HEADER_SIZE, negErrno, h.unique);
    this.sink.send(this.small, OUT_HEADER_SIZE);
  }

  fail(h: RequestHeader, e: unknown): void {
    const code = e instanceof RangeError ? errno('EINVAL') : toErrno(e);
    const what = `${opName(h.opcode)} node ${h.nodeid} (${this.pathOfNode(h.nodeid) ?? '?'})`;
    if (code === errno('EIO')) log('%s failed: %s', what, (e as Error)?.stack ?? e);
    else log('%s: %s', what, (e as Error)?.message ?? e);
    if (expectsReply(h.opcode)) this.error(h, code);
  }
}
