/**
 * Sends one pending extent to the driver as a page-aligned request (rule 1): the partial head
 * and tail pages are read from the driver and completed with the extent's bytes (read-modify-
 * write), the whole pages in between go straight from the extent's slab (no copy). An extent
 * whose pages are all zero becomes Image.writeZeroes.
 *
 * The caller holds the ordered range lock over the extent's pages, so the pages read here
 * already hold every earlier write to them, and no later write to them can start meanwhile.
 */
import { allZero } from '../formats/all-zero';
import type { Image } from '../formats/types';
import { allEnded } from '../io/settle';
import { PAGE_SIZE, pageDown, pageUp } from './pages';

export interface WriteCounters {
  driverWrites: number;
  zeroWrites: number;
  rmwReads: number;
}

export async function writeExtentAligned(image: Image, start: number, end: number, body: Buffer, counters: WriteCounters): Promise<void> {
  const diskSize = image.virtualSize;
  const headCut = start % PAGE_SIZE !== 0;
  const tailCut = end % PAGE_SIZE !== 0 && end !== diskSize;
  const spanStart = pageDown(start);
  const spanEnd = Math.min(pageUp(end), diskSize);

  let pieces: Buffer[];
  if (!headCut && !tailCut) {
    pieces = [body];
  } else if (pageDown(start) === pageDown(end - 1)) {
    // The whole extent sits in one page.
    const page = Buffer.allocUnsafe(spanEnd - spanStart);
    counters.rmwReads++;
    await image.read(spanStart, page);
    body.copy(page, start - spanStart);
    pieces = [page];
  } else {
    const midStart = headCut ? pageUp(start) : start;
    const midEnd = tailCut ? pageDown(end) : end;
    const reads: Promise<void>[] = [];
    let head: Buffer | undefined;
    let tail: Buffer | undefined;
    if (headCut) {
      head = Buffer.allocUnsafe(PAGE_SIZE);
      counters.rmwReads++;
      reads.push(image.read(spanStart, head));
    }
    if (tailCut) {
      tail = Buffer.allocUnsafe(spanEnd - midEnd);
      counters.rmwReads++;
      reads.push(image.read(midEnd, tail));
    }
    await allEnded(reads); // both reads end before the write does, also when one fails
    pieces = [];
    if (head) {
      body.copy(head, start - spanStart, 0, midStart - start);
      pieces.push(head);
    }
    if (midEnd > midStart) pieces.push(body.subarray(midStart - start, midEnd - start));
    if (tail) {
      body.copy(tail, 0, midEnd - start, end - start);
      pieces.push(tail);
    }
  }

  if (allZero(pieces)) {
    counters.zeroWrites++;
    await image.writeZeroes(spanStart, spanEnd - spanStart);
  } else {
    counters.driverWrites++;
    await image.write(spanStart, pieces.length === 1 ? pieces[0]! : pieces);
  }
}
