import { expect, it } from 'vitest';
import { NodeTable, ROOT_ID } from '../../src/fuse/node-table';

it('node ids: counted by LOOKUP, dropped when FORGET takes every lookup back, never reused; root stays', () => {
  const t = new NodeTable();
  expect(t.pathOf(ROOT_ID)).toBe('/');
  const a = t.remember('/a.raw');
  expect(t.remember('/a.raw')).toBe(a);
  expect(t.pathOf(a)).toBe('/a.raw');
  t.forget(a, 1);
  expect(t.pathOf(a)).toBe('/a.raw');
  t.forget(a, 1);
  expect(t.pathOf(a)).toBeUndefined();
  const again = t.remember('/a.raw');
  expect(again).not.toBe(a);
  t.forget(ROOT_ID, 100);
  expect(t.pathOf(ROOT_ID)).toBe('/');
  expect(t.childPath('/', 'x')).toBe('/x');
  expect(t.childPath('/d', 'x')).toBe('/d/x');
  // Inode numbers stay per path across forget, so stat and readdir agree.
  expect(t.inoOf('/a.raw')).toBe(t.inoOf('/a.raw'));
  expect(t.inoOf('/')).toBe(ROOT_ID);
});
