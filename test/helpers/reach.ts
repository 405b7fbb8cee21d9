import * as path from 'node:path';

/**
 * OpenOptions.reach / CreateOptions.reach for driver-level tests that do not test confinement
 * (that is src/image/confine.ts, tested in test/image and test/e2e/hostile): any name, as given.
 */
export const reachAnywhere = (name: string): Promise<string> => Promise.resolve(path.resolve(name));
