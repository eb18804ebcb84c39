// Bundle src/extension.ts with vscode-languageclient into dist/extension.js; `vscode` is
// provided by the editor, so it stays external. Usage: node build.mjs [--minify]
import { build } from 'esbuild';

await build({
  entryPoints: ['src/extension.ts'],
  outfile: 'dist/extension.js',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: ['vscode'],
  minify: process.argv.includes('--minify'),
  logLevel: 'warning',
});
