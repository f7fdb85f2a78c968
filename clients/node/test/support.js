'use strict';
// What every test file shares: the addresses pytest (tests/test_node_client.py) started, and the
// emulator's dev endpoints. Failing, not skipping, when run without them: a run that tests
// nothing must not look green.
const fs = require('node:fs');
const http = require('node:http');

const NEEDED = [
  'WXLOGIN_TEST_TARGET', 'WXLOGIN_TEST_CALLER_KEY', 'WXLOGIN_TEST_LOGIN_ONLY_KEY', 'WXLOGIN_TEST_TOKEN_READER_KEY',
  'WXLOGIN_TEST_SHORT_TTL_TARGET',
  'WXLOGIN_TEST_TLS_TARGET', 'WXLOGIN_TEST_TLS_CA', 'WXLOGIN_TEST_TLS_CERT', 'WXLOGIN_TEST_TLS_KEY', 'WXLOGIN_TEST_OTHER_CA',
  'WXLOGIN_TEST_DOWN_TARGET', 'WXLOGIN_TEST_EMULATOR_URL', 'WXLOGIN_TEST_APP_ID',
  'WXLOGIN_TEST_PY_BACKEND', 'WXLOGIN_TEST_PY_BACKEND_DOWN', 'WXLOGIN_TEST_PY_BACKEND_BAD_KEY', 'WXLOGIN_TEST_BAD_KEY',
];
const missing = NEEDED.filter((name) => !process.env[name]);
if (missing.length > 0) {
  throw new Error(`set ${missing.join(', ')} (pytest tests/test_node_client.py does)`);
}
const env = Object.fromEntries(NEEDED.map((name) => [name.replace('WXLOGIN_TEST_', ''), process.env[name]]));
// Quick retries: a test of an outage need not wait for production's backoff.
const QUICK_RETRY = { initialBackoffMs: 5, maxBackoffMs: 20 };

let users = 0;
/** A user name no other test (or earlier run on the same emulator) has used. */
function newUser(prefix = 'node') {
  users += 1;
  return `${prefix}-${process.pid}-${Date.now()}-${users}`;
}

async function postJson(url, body) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const payload = await response.json();
  if (response.status !== 200) throw new Error(`${url}: ${response.status} ${JSON.stringify(payload)}`);
  return payload;
}

/** Play wx.login() for `user`: a fresh single-use code from the emulator. */
async function wxCode(user) {
  return (await postJson(`${env.EMULATOR_URL}/_dev/login`, { appid: env.APP_ID, user })).code;
}

/** WeChat's encryptedData/iv/rawData/signature for `user`'s current session_key. */
async function userData(user, data) {
  return postJson(`${env.EMULATOR_URL}/_dev/user-data`, { appid: env.APP_ID, user, ...(data ? { data } : {}) });
}

/** Set `user` up with a phone number and play the getPhoneNumber button: a single-use phone code. */
async function phoneCode(user, phone = '13800000000') {
  await postJson(`${env.EMULATOR_URL}/_dev/users`, { appid: env.APP_ID, user, phone });
  return (await postJson(`${env.EMULATOR_URL}/_dev/phone-code`, { appid: env.APP_ID, user })).code;
}

/** Make the emulator's next jscode2session answer go wrong (see README, "The emulator"). */
async function fault(spec) {
  return postJson(`${env.EMULATOR_URL}/_dev/faults`, spec);
}

/** A node:http server on a free loopback port; resolves to { url, close }. */
function serve(handler) {
  return new Promise((resolve) => {
    const server = http.createServer(handler);
    server.listen(0, '127.0.0.1', () => {
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        close: () => new Promise((done) => {
          server.closeAllConnections();
          server.close(done);
        }),
      });
    });
  });
}

function readFile(path) {
  return fs.readFileSync(path);
}

module.exports = { env, QUICK_RETRY, fault, newUser, phoneCode, readFile, serve, userData, wxCode };
