/**
 * Micro-benchmark of the merger's hot path: 4 KiB sequential writes into an Image that does
 * nothing, the way FUSE delivers them without big_writes. Not a test: prints ops/s and MB/s for
 * merged and --no-merge mode, beside the bare cost of copying 4 KiB (the floor of rule 7).
 *
 *   npx tsc -p . && node dist/bench/merge-micro.js [totalMiB=1024]
 */
import { NullImage } from '../src/formats/null/null-image';
import { RequestMerger, type MergerOptions } from '../src/merge';

const BLOCK = 4096;

async function runMerger(label: string, totalBytes: number, opts: MergerOptions): Promise<void> {
  const image = new NullImage('/dev/null-image', totalBytes);
  const merger = new RequestMerger(image, opts);
  const src = Buffer.alloc(BLOCK, 0x5a); // non-zero so the zero check runs its cheap reject
  const n = totalBytes / BLOCK;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await merger.write(i * BLOCK, src);
  await merger.flush();
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const st = merger.stats();
  console.log(
    `${label.padEnd(26)} ${(n / s).toFixed(0).padStart(9)} ops/s ${(totalBytes / s / 1e6).toFixed(0).padStart(6)} MB/s  ` +
      `${((s / n) * 1e9).toFixed(0)} ns/write  driver writes ${st.driverWrites + st.zeroWrites}`,
  );
}

function runCopyFloor(totalBytes: number): void {
  const src = Buffer.alloc(BLOCK, 0x5a);
  const slab = Buffer.allocUnsafe(1 << 20);
  const n = totalBytes / BLOCK;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) src.copy(slab, (i * BLOCK) % slab.length);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(
    `${'copy 4 KiB only (floor)'.padEnd(26)} ${(n / s).toFixed(0).padStart(9)} ops/s ${(totalBytes / s / 1e6).toFixed(0).padStart(6)} MB/s  ${((s / n) * 1e9).toFixed(0)} ns/write`,
  );
}

async function main(): Promise<void> {
  const mib = Number(process.argv[2] ?? 1024);
  const total = mib << 20;
  console.log(`4 KiB sequential writes, ${mib} MiB, node ${process.version}`);
  runCopyFloor(total);
  await runMerger('merger (1 MiB extents)', total, {});
  await runMerger('merger --no-merge', total, { merge: false });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
