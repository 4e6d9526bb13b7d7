// Install the prebuilt OHIF viewer (the `dist/` folder of the @ohif/app npm package) into viewer/ohif-dist.
// `npm pack` fetches the exact version pinned in package.json through the npm client; the tarball's sha512 must
// equal the pinned integrity. Only dist/ is used: the package's runtime dependencies are already bundled into it,
// so they are not installed (a plain `npm install @ohif/app` would pull hundreds of MB of sources we do not need).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, renameSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const pin = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8')).ohif;
const dest = join(here, 'ohif-dist');
const stamp = join(dest, '.anatomark-ohif-version');
if (existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === `${pin.package}@${pin.version} ${pin.integrity}`) {
  console.log(`${pin.package}@${pin.version} already in ${dest}`);
  process.exit(0);
}
const tmp = mkdtempSync(join(tmpdir(), 'ohif-'));
try {
  const out = execFileSync('npm', ['pack', `${pin.package}@${pin.version}`, '--json', '--pack-destination', tmp], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const file = join(tmp, JSON.parse(out)[0].filename);
  const got = 'sha512-' + createHash('sha512').update(readFileSync(file)).digest('base64');
  if (got !== pin.integrity) {
    throw new Error(`integrity mismatch for ${pin.package}@${pin.version}: ${got} != ${pin.integrity}`);
  }
  execFileSync('tar', ['-xzf', file, '-C', tmp, 'package/dist'], { stdio: 'inherit' });
  rmSync(dest, { recursive: true, force: true });
  renameSync(join(tmp, 'package', 'dist'), dest);
  writeFileSync(stamp, `${pin.package}@${pin.version} ${pin.integrity}\n`);
  console.log(`Installed ${pin.package}@${pin.version} (prebuilt OHIF) in ${dest}`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
