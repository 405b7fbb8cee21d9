/**
 * One io_uring instance with 128-byte submission entries (FUSE's commands carry their request in
 * the entry's second half), its rings mapped and read in place: submission entries are written
 * into the shared array and published by the tail; completions are read from the shared CQ
 * without a system call, so the request loop can busy-poll it as it polls /dev/fuse.
 */
import fs from 'node:fs';
import { VdiskError } from '../../io/errors';
import { readOrErrno } from '../../io/syscalls/files';
import { EFD_CLOEXEC, EFD_NONBLOCK, eventfd } from '../../io/syscalls/poll';
import {
  IORING_ENTER_GETEVENTS,
  IORING_FEAT_SINGLE_MMAP,
  IORING_OFF_SQ_RING,
  IORING_OFF_SQES,
  IORING_SETUP_DEFER_TASKRUN,
  IORING_SETUP_SINGLE_ISSUER,
  IORING_SETUP_SQE128,
  IORING_SETUP_TASKRUN_FLAG,
  IORING_SQ_TASKRUN,
  ioUringEnter,
  ioUringRegisterEventfd,
  ioUringSetup,
  mapShared,
  type SharedMapping,
  unmap,
  type UringParams,
} from '../../io/syscalls/uring';

export const SQE_SIZE = 128;
const CQE_SIZE = 16;
/** IORING_OP_URING_CMD: a command for the file's driver (here /dev/fuse's). */
export const IORING_OP_URING_CMD = 46;
/** Where the command's own bytes start in a 128-byte entry (io_uring_sqe.cmd). */
export const SQE_CMD_OFFSET = 48;

/**
 * Completion work (for FUSE: copying the next request into an entry's buffers) is deferred to
 * this thread's own io_uring_enter (runWork): a busy-polling loop is not interrupted by an IPI
 * for it (without DEFER_TASKRUN it was, on every request: 0.6x of the /dev/fuse loop); a
 * sleeping one is woken by the eventfd. TASKRUN_FLAG asks the kernel to raise IORING_SQ_TASKRUN
 * while such work waits, but Linux 6.18 did not raise it for FUSE's work (measured: the loop
 * hung waiting for it), so the loop enters on every drain instead and the flag is only a hint.
 */
const SETUP_FLAGS = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG;

export class IoUring {
  readonly fd: number;
  /** Signalled when completion work arrives: what a sleeping loop polls. */
  readonly wakeFd: number;
  private readonly wakeBuf = Buffer.alloc(8);
  private readonly params: UringParams;
  private readonly rings: SharedMapping;
  private readonly sqes: SharedMapping;
  private readonly ringWords: Uint32Array;
  private readonly sqeBytes: Buffer;
  private readonly cqeBytes: Buffer;
  /** SQ tail we have written up to (published by submit). */
  private sqTail: number;
  private unsubmitted = 0;
  private closed = false;

  constructor(entries: number) {
    const { fd, params } = ioUringSetup(entries, SETUP_FLAGS);
    this.fd = fd;
    this.params = params;
    this.wakeFd = -1;
    try {
      this.wakeFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      ioUringRegisterEventfd(fd, this.wakeFd);
      if (!(params.features & IORING_FEAT_SINGLE_MMAP))
        throw VdiskError.unsupported('io_uring without IORING_FEAT_SINGLE_MMAP (Linux 5.4+)');
      const ringBytes = Math.max(params.sq.array + params.sqEntries * 4, params.cq.cqes + params.cqEntries * CQE_SIZE);
      this.rings = mapShared(fd, ringBytes, IORING_OFF_SQ_RING);
      this.sqes = mapShared(fd, params.sqEntries * SQE_SIZE, IORING_OFF_SQES);
    } catch (e) {
      fs.closeSync(fd);
      if (this.wakeFd >= 0) fs.closeSync(this.wakeFd);
      throw e;
    }
    this.ringWords = new Uint32Array(this.rings.view);
    this.sqeBytes = Buffer.from(this.sqes.view);
    this.cqeBytes = Buffer.from(this.rings.view, params.cq.cqes, params.cqEntries * CQE_SIZE);
    this.sqTail = this.word(params.sq.tail);
  }

  private word(byteOffset: number): number {
    return Atomics.load(this.ringWords, byteOffset >> 2);
  }

  private setWord(byteOffset: number, v: number): void {
    Atomics.store(this.ringWords, byteOffset >> 2, v >>> 0);
  }

  /**
   * The next submission entry's 128 bytes, zeroed, to fill in; it goes to the kernel with the
   * next submit(). Throws when every entry is queued and unsubmitted (callers size the ring).
   */
  nextSqe(): Buffer {
    if (this.closed) throw VdiskError.io('io_uring ring closed');
    const head = this.word(this.params.sq.head);
    if ((this.sqTail - head) >>> 0 >= this.params.sqEntries) throw VdiskError.io('io_uring submission queue full');
    const index = this.sqTail & this.word(this.params.sq.ringMask);
    // Entry i of the index array names SQE i: the array is the identity, set as we go.
    this.ringWords[(this.params.sq.array >> 2) + index] = index;
    this.sqTail = (this.sqTail + 1) >>> 0;
    this.unsubmitted++;
    const sqe = this.sqeBytes.subarray(index * SQE_SIZE, (index + 1) * SQE_SIZE);
    sqe.fill(0);
    return sqe;
  }

  /** Publishes the entries filled since the last submit and hands them to the kernel (one io_uring_enter). */
  submit(): void {
    if (this.unsubmitted === 0 || this.closed) return;
    this.setWord(this.params.sq.tail, this.sqTail); // a sequentially consistent store: the entries are written before it
    for (let tries = 0; this.unsubmitted > 0; tries++) {
      // GETEVENTS: the work the submission itself caused (the next request) runs in the same call.
      const n = ioUringEnter(this.fd, this.unsubmitted, 0, IORING_ENTER_GETEVENTS);
      if (n > 0) this.unsubmitted -= n;
      // EINTR, EAGAIN: the kernel took none; go again (a bounded number of times).
      else if (n === 0 || tries > 1000) throw VdiskError.io(`io_uring_enter took none of ${this.unsubmitted} entries (${n})`);
    }
  }

  /** True when the kernel says completion work waits for runWork (a hint: see SETUP_FLAGS). */
  workPending(): boolean {
    return !this.closed && (this.word(this.params.sq.flags) & IORING_SQ_TASKRUN) !== 0;
  }

  /** Runs the deferred completion work: its completions appear in the CQ. */
  runWork(): void {
    if (!this.closed) ioUringEnter(this.fd, 0, 0, IORING_ENTER_GETEVENTS);
  }

  /**
   * Before the loop sleeps: resets the eventfd, then says whether anything arrived meanwhile
   * (work or completions). Work that arrives after the reset signals the eventfd again.
   */
  quiet(): boolean {
    if (this.closed) return true;
    readOrErrno(this.wakeFd, this.wakeBuf);
    this.runWork();
    const cq = this.params.cq;
    return !this.workPending() && this.word(cq.head) === this.word(cq.tail);
  }

  /** Hands each completion to `fn` (its user data's low 32 bits, and its result); returns how many. */
  reap(fn: (userData: number, res: number) => void): number {
    if (this.closed) return 0; // the views point at unmapped memory now
    const cq = this.params.cq;
    let head = this.word(cq.head);
    const tail = this.word(cq.tail);
    if (head === tail) return 0;
    const mask = this.word(cq.ringMask);
    let n = 0;
    while (head !== tail) {
      const o = (head & mask) * CQE_SIZE;
      fn(this.cqeBytes.readUInt32LE(o), this.cqeBytes.readInt32LE(o + 8));
      head = (head + 1) >>> 0;
      n++;
    }
    this.setWord(cq.head, head);
    return n;
  }

  /** Unmaps the rings and closes the fd: the kernel cancels whatever commands are still queued. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    unmap(this.sqes);
    unmap(this.rings);
    fs.closeSync(this.fd);
    fs.closeSync(this.wakeFd);
  }
}
