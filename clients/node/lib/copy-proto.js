'use strict';
// `npm pack` / `npm publish`: ship the repository's one contract, protos/, as proto/ in the
// package (prepack), and remove the copy again (postpack, `--remove`): in the repository the
// client reads protos/ itself (lib/client.js), so no stale copy can linger there.
const fs = require('node:fs');
const path = require('node:path');

const source = path.join(__dirname, '..', '..', '..', 'protos', 'wxlogin', 'v1', 'auth.proto');
const target = path.join(__dirname, '..', 'proto', 'wxlogin', 'v1', 'auth.proto');
if (process.argv.includes('--remove')) {
  fs.rmSync(path.join(__dirname, '..', 'proto'), { recursive: true, force: true });
} else {
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.copyFileSync(source, target);
}
