// Lint: typescript-eslint's recommended rules with type information (floating promises matter in a
// filesystem whose every operation is async), plus prettier's formatting check via `npm run lint`.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import prettier from 'eslint-config-prettier';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'bench/results/**', '**/*.mjs', '**/*.cjs', '**/*.js'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { project: './tsconfig.eslint.json', tsconfigRootDir: import.meta.dirname },
    },
  },
  {
    rules: {
      // An async function without await still turns a throw into a rejection; the operations rely
      // on that (a driver's sync range check must reject, not throw through the transport).
      '@typescript-eslint/require-await': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
  {
    // The request path imports leaf modules by name. TypeScript compiles `export *` and
    // `import * as x` to CommonJS getters (one shared closure, a megamorphic keyed load) that
    // every request would pay per call: see src/io/syscalls/index.ts.
    files: ['src/fuse/kernel/**/*.ts', 'src/fuse/io-uring/**/*.ts', 'src/io/host-file.ts', 'src/io/write-behind.ts'],
    ignores: ['src/fuse/kernel/protocol/index.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              regex: '(^|/)(io/syscalls|syscalls|kernel/protocol|protocol)$',
              message: 'import the file inside (a barrel is a getter per call on the request path)',
            },
          ],
        },
      ],
      'no-restricted-syntax': [
        'error',
        { selector: 'ImportNamespaceSpecifier', message: 'import names (`import * as` is a getter per access on the request path)' },
      ],
    },
  },
  {
    // Tests parse JSON from qemu-img and poke at internals: untyped values are the point there.
    files: ['test/**/*.ts'],
    rules: {
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      '@typescript-eslint/unbound-method': 'off',
      '@typescript-eslint/no-explicit-any': 'off',
    },
  },
  prettier,
);
