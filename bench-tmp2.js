const fs = require('fs'); const { performance } = require('perf_hooks');
const fd = fs.openSync('/tmp/m256.qcow2', 'r');
// read the 512 L2 tables: each at 262144 + i*(512MiB+64KiB)? find by L1
const hdr = Buffer.alloc(4096); fs.readSync(fd, hdr, 0, 4096, 0);
const l1off = Number(hdr.readBigUInt64BE(40)); const l1n = hdr.readUInt32BE(36);
const l1 = Buffer.alloc(l1n * 8); fs.readSync(fd, l1, 0, l1.length, l1off);
const tabs = []; for (let i = 0; i < l1n; i++) { const o = Number(l1.readBigUInt64BE(i * 8) & 0x00fffffffffffe00n); const b = Buffer.alloc(65536); fs.readSync(fd, b, 0, 65536, o); tabs.push(b); }
function run1(w, from, to, hi, lo, cs) {
  let eHi = hi & 0x00ffffff, eLo = lo & (0xfffffe00 | 0); let j = from;
  for (; j < to; j++) { const nLo = (eLo + cs) | 0; if (eLo < 0 && nLo >= 0) eHi = (eHi + 1) | 0; eLo = nLo;
    const h = w.getInt32(j * 8); const l = w.getInt32(j * 8 + 4);
    if (h & 0x40000000 || l & 1 || (h & 0x00ffffff) !== eHi || (l & (0xfffffe00 | 0)) !== eLo) break; }
  return j - from;
}
// LE Int32Array variant: compare against byte-swapped expectations
function bswap(x) { return ((x & 0xff) << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24); }
function run2(a, from, to, hi, lo, cs) {
  // a: Int32Array (LE) over the table; words a[2j] = bswap(hiBE), a[2j+1] = bswap(loBE)
  let eHi = hi, eLo = lo; let j = from;
  for (; j < to; j++) {
    const nLo = (eLo + cs) | 0; if (eLo < 0 && nLo >= 0) eHi = (eHi + 1) | 0; eLo = nLo;
    if (a[2 * j] !== bswap(eHi) || a[2 * j + 1] !== bswap(eLo)) break;
  }
  return j - from;
}
for (let r = 0; r < 4; r++) {
  let t = performance.now(); let s = 0;
  for (const b of tabs) { const w = new DataView(b.buffer, b.byteOffset, b.length); s += run1(w, 1, 8192, w.getInt32(0), w.getInt32(4), 65536); }
  const t1 = performance.now() - t; t = performance.now(); let s2 = 0;
  for (const b of tabs) { const a = new Int32Array(b.buffer, b.byteOffset, b.length / 4); const w = new DataView(b.buffer, b.byteOffset, b.length); s2 += run2(a, 1, 8192, w.getInt32(0), w.getInt32(4), 65536); }
  console.log('dataview', t1.toFixed(1), s, 'int32+bswap', (performance.now() - t).toFixed(1), s2);
}
