import { powerOfTwoAtLeast } from '../../io/safe-int';
import { initFlagNames } from './protocol/flags';
import { type InitOut } from './protocol/init';
import { opName } from './protocol/opcodes';

/**
 * What the kernel transport saw: requests per opcode and the sizes of READ and WRITE requests
 * (power-of-two buckets), printed with --stats at unmount; the benchmark reads it.
 */
export class TransportStats {
  readonly ops = new Map<number, number>();
  readonly readSizes = new Map<number, number>();
  readonly writeSizes = new Map<number, number>();
  /** READ and WRITE requests answered inside dispatch, with no promise turn (Image.readSync / writeSync). */
  readsAtOnce = 0;
  writesAtOnce = 0;
  interrupts = 0;
  /** Replies the kernel refused with ENOENT: the request was interrupted or its caller died. */
  abandonedReplies = 0;
  kernel: { major: number; minor: number; flags: number } | undefined;
  negotiated: InitOut | undefined;

  request(opcode: number): void {
    this.ops.set(opcode, (this.ops.get(opcode) ?? 0) + 1);
  }

  size(kind: 'read' | 'write', bytes: number): void {
    const bucket = powerOfTwoAtLeast(bytes);
    const m = kind === 'read' ? this.readSizes : this.writeSizes;
    m.set(bucket, (m.get(bucket) ?? 0) + 1);
  }

  report(): string {
    const sizes = (m: Map<number, number>) =>
      [...m.entries()]
        .sort((a, b) => a[0] - b[0])
        .map(([b, n]) => `${b >= 1 << 20 ? `${b >> 20}M` : b >= 1024 ? `${b >> 10}K` : b}:${n}`)
        .join(' ') || '-';
    const lines = ['stats transport (kernel protocol):'];
    if (this.kernel && this.negotiated) {
      lines.push(`    kernel protocol: 7.${this.kernel.minor}, answered 7.${this.negotiated.minor}`);
      lines.push(`    max_write: ${this.negotiated.maxWrite}`);
      lines.push(`    flags: ${initFlagNames(this.negotiated.flags, this.negotiated.flags2).join(' ')}`);
    }
    lines.push(
      `    requests: ${[...this.ops.entries()]
        .sort((a, b) => b[1] - a[1])
        .map(([op, n]) => `${opName(op)}:${n}`)
        .join(' ')}`,
    );
    lines.push(`    read request sizes: ${sizes(this.readSizes)}`);
    lines.push(`    write request sizes: ${sizes(this.writeSizes)}`);
    lines.push(`    answered at once: reads ${this.readsAtOnce} writes ${this.writesAtOnce}`);
    lines.push(`    interrupts: ${this.interrupts}`);
    lines.push(`    abandoned replies: ${this.abandonedReplies}`);
    return lines.join('\n');
  }
}
