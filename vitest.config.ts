import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Integration tests mount real filesystems; two cores only, so keep parallelism modest.
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    reporters: ['default'],
    globalSetup: ['test/helpers/global-setup.ts'],
  },
});
