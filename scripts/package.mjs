/* global process */
// Builds dist/: one ncc bundle per entry (main, post), ESM, for the runner's Node 24.
// ssh2's native crypto binding is left out (built for another Node ABI it would not load;
// ssh2 falls back to its JavaScript ciphers), and CommonJS code in the bundle that reads
// __dirname gets it from import.meta.url.
// `--out DIR` builds into DIR instead of dist/ (a private bundle for tests: PREP_TEST_DIST).
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';

const SHIM =
  "import { fileURLToPath as __shimFileURLToPath } from 'node:url';\n" +
  "import { dirname as __shimDirname } from 'node:path';\n" +
  'const __filename = __shimFileURLToPath(import.meta.url);\n' +
  'const __dirname = __shimDirname(__filename);\n';

const outFlag = process.argv.indexOf('--out');
const root = outFlag > 0 ? process.argv[outFlag + 1] : 'dist';
if (!root) throw new Error('--out needs a directory');

for (const entry of ['main', 'post']) {
  const out = `${root}/${entry}`;
  rmSync(out, { recursive: true, force: true });
  const args = ['build', `src/${entry}.ts`, '-o', out, '--target', 'es2022', '--quiet'];
  if (entry === 'main') args.push('--license', 'licenses.txt');
  execFileSync('node_modules/.bin/ncc', args, { stdio: 'inherit' });
  for (const extra of ['build', 'lib', 'pagent.exe'])
    rmSync(`${out}/${extra}`, { recursive: true, force: true });
  const file = `${out}/index.js`;
  writeFileSync(file, SHIM + readFileSync(file, 'utf8'));
}
