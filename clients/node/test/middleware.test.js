'use strict';
// bearerAuth against the LIVE service, side by side with the Python bearer_auth: pytest runs an
// aiohttp backend with clients.aiohttp_auth.bearer_auth for each case (live, wxlogin down, a key
// wxlogin refuses), and every request must get the same status, headers and JSON from both.
const test = require('node:test');
const assert = require('node:assert/strict');
const wx = require('..');
const { env, QUICK_RETRY, newUser, serve, wxCode } = require('./support');

const live = wx.connect(env.TARGET, { callerKey: env.CALLER_KEY, retry: QUICK_RETRY });
const down = wx.connect(env.DOWN_TARGET, { retry: QUICK_RETRY });
const badKey = wx.connect(env.TARGET, { callerKey: env.BAD_KEY, retry: QUICK_RETRY });
test.after(() => [live, down, badKey].forEach((made) => made.close()));

/** The Node twin of tests/test_auth_helpers.aiohttp_backend: /me needs a session, /ping is public. */
function backend(client) {
  const auth = wx.bearerAuth(client, { public: (req) => req.url === '/ping' });
  return serve((req, res) => {
    auth(req, res, (error) => {
      if (error) {
        res.writeHead(500).end('handler error');
        return;
      }
      const body = req.url === '/ping' ? { pong: true } : { user_id: req.wxloginUser.userId, openid: req.wxloginUser.openid };
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' }).end(JSON.stringify(body));
    });
  });
}

async function get(url, headers = {}) {
  const response = await fetch(url, { headers });
  return {
    status: response.status,
    contentType: response.headers.get('content-type'),
    challenge: response.headers.get('www-authenticate'),
    body: await response.json(),
  };
}

async function logIn() {
  return (await live.login(await wxCode(newUser()), { appId: env.APP_ID })).token;
}

test('the Node middleware answers every request exactly as the Python bearer_auth', async () => {
  const token = await logIn();
  const revoked = await logIn();
  await live.revokeSession(revoked);
  const cases = [
    ['no Authorization', '/me', {}],
    ['another scheme', '/me', { authorization: `Basic ${token}` }],
    ['Bearer and nothing', '/me', { authorization: 'Bearer ' }],
    ['lower-case scheme', '/me', { authorization: `bearer ${token}` }],
    ['padded', '/me', { authorization: `  Bearer   ${token}  ` }],
    ['an unknown token', '/me', { authorization: 'Bearer wxl1_' + 'Z'.repeat(43) }],
    ['garbage', '/me', { authorization: 'Bearer garbage' }],
    ['a revoked token', '/me', { authorization: `Bearer ${revoked}` }],
    ['a live token', '/me', { authorization: `Bearer ${token}` }],
    ['a live token and a request id', '/me', { authorization: `Bearer ${token}`, 'x-request-id': 'req-1' }],
    ['a public path', '/ping', {}],
  ];
  const node = await backend(live);
  try {
    for (const [name, path, headers] of cases) {
      const python = await get(env.PY_BACKEND + path, headers);
      const ours = await get(node.url + path, headers);
      assert.deepEqual(ours, python, name);
    }
  } finally {
    await node.close();
  }
  // And the statuses are the ones the contract promises, not merely equal.
  const byName = async (headers, path = '/me') => get(env.PY_BACKEND + path, headers);
  assert.equal((await byName({})).status, 401);
  assert.equal((await byName({ authorization: `Bearer ${token}` })).status, 200);
});

test('401 JSON for a missing, invalid or revoked token, with the Bearer challenge', async () => {
  const revoked = await logIn();
  await live.revokeSession(revoked);
  const node = await backend(live);
  try {
    const missing = await get(`${node.url}/me`);
    assert.deepEqual(missing, {
      status: 401,
      contentType: 'application/json; charset=utf-8',
      challenge: 'Bearer realm="wxlogin"',
      body: {
        error: {
          code: 'UNAUTHENTICATED',
          reason: 'SESSION_INVALID',
          message: 'send the login token as Authorization: Bearer <token>',
        },
      },
    });
    for (const token of ['wxl1_' + 'Z'.repeat(43), revoked]) {
      const answer = await get(`${node.url}/me`, { authorization: `Bearer ${token}` });
      assert.equal(answer.status, 401);
      assert.equal(answer.body.error.reason, 'SESSION_INVALID');
    }
  } finally {
    await node.close();
  }
});

test('an expired token is 401 SESSION_EXPIRED', async () => {
  const short = wx.connect(env.SHORT_TTL_TARGET, { retry: QUICK_RETRY });
  const node = await backend(short);
  try {
    const login = await short.login(await wxCode(newUser()), { appId: env.APP_ID });
    await new Promise((resolve) => setTimeout(resolve, 1500)); // that service's sessions live 1 s
    const answer = await get(`${node.url}/me`, { authorization: `Bearer ${login.token}` });
    assert.equal(answer.status, 401);
    assert.equal(answer.body.error.code, 'UNAUTHENTICATED');
    assert.equal(answer.body.error.reason, 'SESSION_EXPIRED');
  } finally {
    await node.close();
    short.close();
  }
});

test('wxlogin unreachable is 503 from both, never 401; a refused caller key is 500 from both', async () => {
  const nodeDown = await backend(down);
  const nodeBadKey = await backend(badKey);
  const headers = { authorization: 'Bearer wxl1_' + 'Z'.repeat(43) };
  try {
    const ours = await get(`${nodeDown.url}/me`, headers);
    assert.deepEqual(ours, await get(`${env.PY_BACKEND_DOWN}/me`, headers));
    assert.equal(ours.status, 503);
    assert.deepEqual(ours.body.error, { code: 'UNAVAILABLE', reason: 'SERVICE_UNAVAILABLE', message: 'wxlogin is unreachable; retry later' });
    assert.equal(ours.challenge, null);
    const refused = await get(`${nodeBadKey.url}/me`, headers);
    assert.deepEqual(refused, await get(`${env.PY_BACKEND_BAD_KEY}/me`, headers));
    assert.equal(refused.status, 500);
    assert.equal(refused.body.error.reason, 'CALLER_UNAUTHENTICATED');
  } finally {
    await nodeDown.close();
    await nodeBadKey.close();
  }
});

test('a live session reaches the handler with req.wxloginUser and req.wxloginSession', async () => {
  const token = await logIn();
  const expected = await live.checkSession(token);
  const auth = wx.bearerAuth(live);
  const seen = [];
  const node = await serve((req, res) => {
    auth(req, res, () => {
      seen.push([req.wxloginUser, req.wxloginSession]);
      res.writeHead(204).end();
    });
  });
  try {
    assert.equal((await fetch(`${node.url}/anything`, { headers: { authorization: `Bearer ${token}` } })).status, 204);
  } finally {
    await node.close();
  }
  assert.deepEqual(seen, [[expected.user, expected]]);
});

test('a failure that is not wxlogin\'s goes to next(error), as Express error handlers expect', async () => {
  const broken = { checkSession: async () => { throw new RangeError('a bug'); } };
  const auth = wx.bearerAuth(broken);
  const errors = [];
  const node = await serve((req, res) => {
    auth(req, res, (error) => {
      errors.push(error);
      res.writeHead(500).end();
    });
  });
  try {
    assert.equal((await fetch(`${node.url}/me`, { headers: { authorization: 'Bearer t' } })).status, 500);
  } finally {
    await node.close();
  }
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof RangeError);
});
