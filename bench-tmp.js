const { openImage } = require('./dist/src/image');
(async () => {
  const { performance } = require('perf_hooks');
  const img = await openImage('/tmp/m256.qcow2', { writable: false, warn: () => {}, tuning: { qcow2: { cacheSize: 4 << 20 } } });
  for (let r = 0; r < 4; r++) {
    const t = performance.now(); let n = 0;
    for (let off = 0; off < img.virtualSize; off += 2 ** 30) n += (await img.map(off, 2 ** 30)).length;
    console.log('pass', r, (performance.now() - t).toFixed(1), 'ms', n, 'extents');
  }
  await img.close();
})();
