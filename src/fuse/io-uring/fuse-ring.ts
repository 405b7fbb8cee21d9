/**
 * FUSE over io_uring (Documentation/filesystems/fuse-io-uring.rst, fs/fuse/dev_uring.c): the
 * ring queues' entries, one request each, as the request loop's second source (RequestSource).
 *
 * - The kernel has one queue per possible CPU and serves a request on the queue of the CPU that
 *   issued it; the ring is used only once every queue has an entry, so each gets `depth`.
 * - An entry is two buffers the kernel writes a request into and reads the reply from: the
 *   headers (fuse_uring_req_header: fuse_in_header or fuse_out_header in the first 128 bytes,
 *   the opcode's own header in the next 128, then fuse_uring_ent_in_out) and the payload (the
 *   rest of the request, or of the reply). REGISTER hands an entry to the kernel;
 *   COMMIT_AND_FETCH returns the reply and takes the next request into the same entry. Each
 *   completes (a CQE) when a request has been written into the entry.
 * - The adapter decodes requests laid out as /dev/fuse gives them: the in header and the
 *   opcode's header are copied (at most 168 bytes) into the room kept in front of the payload,
 *   so the request is contiguous without copying its data.
 */
import createDebug from 'debug';
import { addressOf } from '../../io/syscalls/uring';
import type { RequestSource } from '../kernel/session-loop';
import { IN_HEADER_SIZE, OUT_HEADER_SIZE } from '../kernel/protocol/header';
import { IORING_OP_URING_CMD, IoUring, SQE_CMD_OFFSET } from './ring';

const log = createDebug('vdiskfs:fuse');

const FUSE_IO_URING_CMD_REGISTER = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2;
/** struct fuse_uring_req_header: in_out[128], op_in[128], fuse_uring_ent_in_out (32 bytes). */
const OP_IN = 128;
const ENT_IN_OUT = 256;
const HEADERS_SIZE = 288;
/** Room in front of the payload for the in header and the largest opcode header. */
const FRONT = 256;

interface Entry {
  readonly index: number;
  readonly qid: number;
  readonly headers: Buffer;
  /** FRONT bytes of room, then the payload the kernel knows. */
  readonly area: Buffer;
  readonly iov: Buffer;
  /** The request the entry holds while we serve it. */
  unique: number;
}

export interface FuseRingOptions {
  /** Queues: the kernel's count of possible CPUs. */
  queues: number;
  /** Entries per queue: requests each queue holds at once. */
  depth: number;
  /** Largest payload: max_write (and max_pages × 4 KiB) as negotiated at INIT. */
  payloadSize: number;
  /** Something failed and the ring is not serving: said once, as one line. */
  warn: (message: string) => void;
}

export class FuseRing implements RequestSource {
  private readonly ring: IoUring;
  private readonly entries: Entry[] = [];
  private readonly byUnique = new Map<number, Entry>();
  private registered = false;
  private failed = false;
  readonly counts = { ringRequests: 0, ringReplies: 0, ringErrors: 0 };

  /** The session's /dev/fuse fd, which every command names (attach). */
  private devFd = -1;

  constructor(private readonly opts: FuseRingOptions) {
    this.ring = new IoUring(opts.queues * opts.depth);
    for (let qid = 0; qid < opts.queues; qid++)
      for (let i = 0; i < opts.depth; i++) {
        // allocUnsafeSlow: a backing store of its own, never moved, whose address the kernel keeps.
        const headers = Buffer.allocUnsafeSlow(HEADERS_SIZE);
        const area = Buffer.allocUnsafeSlow(FRONT + opts.payloadSize);
        const iov = Buffer.allocUnsafeSlow(32); // struct iovec[2]
        iov.writeBigUInt64LE(addressOf(headers), 0);
        iov.writeBigUInt64LE(BigInt(HEADERS_SIZE), 8);
        iov.writeBigUInt64LE(addressOf(area) + BigInt(FRONT), 16);
        iov.writeBigUInt64LE(BigInt(opts.payloadSize), 24);
        this.entries.push({ index: this.entries.length, qid, headers, area, iov, unique: 0 });
      }
  }

  attach(devFd: number): void {
    this.devFd = devFd;
  }

  /** Readable when the ring has work for us (an eventfd the ring signals). */
  get fd(): number {
    return this.ring.wakeFd;
  }

  serving(): boolean {
    return this.registered && !this.failed && this.counts.ringRequests > 0;
  }

  quiet(): boolean {
    return this.ring.quiet();
  }

  /** Hands every entry to the kernel, right after INIT was answered; the ring serves once all queues have one. */
  register(): void {
    for (const e of this.entries) this.command(e, FUSE_IO_URING_CMD_REGISTER, 0);
    this.ring.submit();
    this.registered = true;
  }

  private command(e: Entry, op: number, commitId: number): void {
    const sqe = this.ring.nextSqe();
    sqe.writeUInt8(IORING_OP_URING_CMD, 0);
    sqe.writeInt32LE(this.devFd, 4);
    sqe.writeUInt32LE(op, 8); // cmd_op
    if (op === FUSE_IO_URING_CMD_REGISTER) {
      sqe.writeBigUInt64LE(addressOf(e.iov), 16); // addr: the iovec pair
      sqe.writeUInt32LE(2, 24); // len: two iovecs
    }
    sqe.writeUInt32LE(e.index, 32); // user_data
    // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; }
    sqe.writeUInt32LE(commitId % 2 ** 32, SQE_CMD_OFFSET + 8);
    sqe.writeUInt32LE(Math.floor(commitId / 2 ** 32), SQE_CMD_OFFSET + 12);
    sqe.writeUInt16LE(e.qid, SQE_CMD_OFFSET + 16);
  }

  drain(dispatch: (buf: Buffer, n: number) => void, max: number): number {
    if (!this.registered) return 0;
    this.ring.runWork(); // every time: the kernel's TASKRUN hint is not raised for this work (ring.ts)
    let got = 0;
    // Reaped one at a time (max 1 per call) so that `max` holds; the loop calls again.
    while (got < max) {
      const n = this.ring.reap((index, res) => {
        const e = this.entries[index]!;
        if (res < 0) return this.failedEntry(e, res);
        got++;
        this.counts.ringRequests++;
        const h = e.headers;
        const len = h.readUInt32LE(0);
        const payload = h.readUInt32LE(ENT_IN_OUT + 16);
        const opSize = len - IN_HEADER_SIZE - payload;
        if (opSize < 0 || opSize > OP_IN) {
          this.opts.warn(`FUSE ring request of ${len} bytes with a ${payload}-byte payload: ignored`);
          return;
        }
        const start = FRONT - IN_HEADER_SIZE - opSize;
        h.copy(e.area, start, 0, IN_HEADER_SIZE);
        h.copy(e.area, FRONT - opSize, OP_IN, OP_IN + opSize);
        e.unique = h.readUInt32LE(8) + h.readUInt32LE(12) * 2 ** 32;
        this.byUnique.set(e.unique, e);
        dispatch(e.area.subarray(start), len);
      });
      if (n === 0) break;
    }
    return got;
  }

  private failedEntry(e: Entry, res: number): void {
    this.counts.ringErrors++;
    // -ENOTCONN / -ECANCELED: the connection or the ring is going away; nothing to say.
    if (res === -107 || res === -125) return;
    if (!this.failed) {
      this.failed = true;
      this.opts.warn(`FUSE over io_uring: entry of queue ${e.qid} failed (errno ${-res}); requests go through /dev/fuse`);
    }
    log('ring entry %d failed: %d', e.index, res);
  }

  send(buf: Buffer, len: number): boolean {
    const unique = buf.readUInt32LE(8) + buf.readUInt32LE(12) * 2 ** 32;
    const e = this.byUnique.get(unique);
    if (!e) return false;
    this.byUnique.delete(unique);
    buf.copy(e.headers, 0, 0, OUT_HEADER_SIZE);
    const body = len - OUT_HEADER_SIZE;
    buf.copy(e.area, FRONT, OUT_HEADER_SIZE, len);
    e.headers.writeUInt32LE(body, ENT_IN_OUT + 16); // payload_sz
    this.command(e, FUSE_IO_URING_CMD_COMMIT_AND_FETCH, unique);
    this.ring.submit();
    this.counts.ringReplies++;
    return true;
  }

  close(): void {
    this.ring.close();
  }
}
