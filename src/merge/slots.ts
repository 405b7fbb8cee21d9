/** A counting semaphore bounding concurrent driver writes (FIFO, so it never starves a writer). */
export class Slots {
  private free: number;
  private queue: Array<() => void> = [];
  private head = 0;

  constructor(n: number) {
    this.free = n;
  }

  acquire(): Promise<void> | null {
    if (this.free > 0) {
      this.free--;
      return null;
    }
    return new Promise<void>((resolve) => this.queue.push(resolve));
  }

  release(): void {
    if (this.head < this.queue.length) {
      const next = this.queue[this.head]!;
      this.head++;
      if (this.head > 1024 && this.head * 2 > this.queue.length) {
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      next();
    } else {
      this.free++;
    }
  }
}
