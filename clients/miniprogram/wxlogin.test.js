'use strict';
// The sample mini-program module against the LIVE edge and emulator, with `wx` stubbed:
// wx.login gets a real code from the emulator, wx.request is fetch. Run through
// tests/test_miniprogram.py, which starts the edge and passes the addresses.
const test = require('node:test');
const assert = require('node:assert/strict');
const { createWxLogin, WxLoginError } = require('./wxlogin');

const EDGE = process.env.WXLOGIN_EDGE_URL;
const EMULATOR = process.env.WXLOGIN_EMULATOR_URL;
const APP_ID = process.env.WXLOGIN_APP_ID;
if (!EDGE || !EMULATOR || !APP_ID) {
  // Failing, not skipping: a run that tests nothing must not look green.
  throw new Error('set WXLOGIN_EDGE_URL, WXLOGIN_EMULATOR_URL and WXLOGIN_APP_ID (pytest tests/test_miniprogram.py does)');
}

let users = 0;

async function postJson(url, body, headers = {}) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/** A `wx` for one simulated WeChat user: counts wx.login calls and requests by path. */
function fakeWx({ user = `node-user-${process.pid}-${++users}`, code, loseAnswers = 0 } = {}) {
  const storage = new Map();
  const calls = { login: 0, paths: [] };
  // The next `loseAnswers` requests reach the edge, but their answers never come back.
  let toLose = loseAnswers;
  return {
    user,
    calls,
    login({ success, fail }) {
      calls.login += 1;
      if (code) return setTimeout(() => success({ code, errMsg: 'login:ok' }), 0);
      postJson(`${EMULATOR}/_dev/login`, { appid: APP_ID, user }).then(
        (res) => success({ code: res.body.code, errMsg: 'login:ok' }),
        (error) => fail({ errMsg: `login:fail ${error.message}` }),
      );
    },
    request({ url, method = 'GET', data, header = {}, success, fail }) {
      calls.paths.push(new URL(url).pathname);
      const init = { method, headers: { ...header } };
      if (data !== undefined && method !== 'GET') {
        init.body = JSON.stringify(data);
        init.headers['content-type'] = 'application/json';
      }
      fetch(url, init)
        .then(async (response) => {
          const text = await response.text();
          if (toLose > 0) {
            toLose -= 1;
            fail({ errMsg: 'request:fail timeout' });
            return;
          }
          let body = text;
          try {
            body = JSON.parse(text);
          } catch {
            // like wx.request: a body that is not JSON stays a string
          }
          success({ statusCode: response.status, data: body, header: Object.fromEntries(response.headers) });
        })
        .catch((error) => fail({ errMsg: `request:fail ${error.message}` }));
    },
    getStorageSync: (key) => (storage.has(key) ? storage.get(key) : ''),
    setStorageSync: (key, value) => storage.set(key, value),
    removeStorageSync: (key) => storage.delete(key),
  };
}

const logins = (wx) => wx.calls.paths.filter((path) => path === '/v1/login').length;

test('parallel first requests share one wx.login and one /v1/login', async () => {
  const wx = fakeWx();
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx });
  const results = await Promise.all(Array.from({ length: 5 }, () => auth.request({ path: '/v1/session' })));
  assert.equal(wx.calls.login, 1);
  assert.equal(logins(wx), 1);
  const ids = new Set(results.map((res) => res.data.user.user_id));
  assert.equal(ids.size, 1);
  assert.ok(wx.getStorageSync('wxlogin_token').startsWith('wxl1_'));
});

test('the stored token is sent on later requests without logging in again', async () => {
  const wx = fakeWx();
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx });
  const first = await auth.login();
  assert.equal(first.new_user, true);
  const res = await auth.request({ path: '/v1/session' });
  assert.equal(res.statusCode, 200);
  assert.equal(res.data.user.user_id, first.user.user_id);
  assert.equal(wx.calls.login, 1);
});

test('a revoked token triggers one new login shared by parallel requests', async () => {
  const wx = fakeWx();
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx });
  const { token: dead } = await auth.login();
  // Revoked behind the module's back: the stored token is now SESSION_INVALID.
  const revoked = await postJson(`${EDGE}/v1/logout`, undefined, { Authorization: `Bearer ${dead}` });
  assert.equal(revoked.status, 204);
  const results = await Promise.all(Array.from({ length: 4 }, () => auth.request({ path: '/v1/session' })));
  assert.ok(results.every((res) => res.statusCode === 200));
  assert.equal(wx.calls.login, 2);
  assert.equal(logins(wx), 2);
  assert.notEqual(wx.getStorageSync('wxlogin_token'), dead);
});

test('a malformed stored token is replaced by a fresh login', async () => {
  const wx = fakeWx();
  wx.setStorageSync('wxlogin_token', 'left-over-garbage');
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx });
  const res = await auth.request({ path: '/v1/session' });
  assert.equal(res.statusCode, 200);
  assert.equal(wx.calls.login, 1);
});

test('decryptUserData forwards WeChat fields and returns the decrypted data', async () => {
  const wx = fakeWx();
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx });
  await auth.login();
  // What wx.getUserProfile would hand the page, encrypted with this user's session_key.
  const profile = await postJson(`${EMULATOR}/_dev/user-data`, {
    appid: APP_ID,
    user: wx.user,
    data: { nickName: 'Node', city: 'Shenzhen' },
  });
  const { data } = await auth.decryptUserData(profile.body);
  assert.equal(data.nickName, 'Node');
  assert.equal(data.watermark.appid, APP_ID);
});

test('other failures are thrown as WxLoginError and never cause a login', async () => {
  const wx = fakeWx();
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx });
  await auth.login();
  await assert.rejects(
    auth.request({ path: '/v1/user-data/decrypt', method: 'POST', data: { encryptedData: 'x' } }),
    (error) => error instanceof WxLoginError && error.statusCode === 400 && error.reason === 'BAD_REQUEST',
  );
  assert.equal(wx.calls.login, 1);
});

test('a bad code fails the login with CODE_INVALID instead of looping', async () => {
  const wx = fakeWx({ code: 'not-a-real-code' });
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx });
  await assert.rejects(
    auth.request({ path: '/v1/session' }),
    (error) => error instanceof WxLoginError && error.statusCode === 401 && error.reason === 'CODE_INVALID',
  );
  assert.equal(wx.calls.login, 1);
});

test('logout ends the session on the server and forgets the token', async () => {
  const wx = fakeWx();
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx });
  const { token } = await auth.login();
  await auth.logout();
  assert.equal(wx.getStorageSync('wxlogin_token'), '');
  const check = await fetch(`${EDGE}/v1/session`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(check.status, 401);
  assert.equal((await check.json()).error.reason, 'SESSION_INVALID');
});

test('getPhoneNumber sends the button\'s code and returns the number', async () => {
  const wx = fakeWx();
  await postJson(`${EMULATOR}/_dev/users`, { appid: APP_ID, user: wx.user, phone: '13800138000' });
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx });
  await auth.login();
  // What the button's bindgetphonenumber event carries once the user agrees.
  const minted = await postJson(`${EMULATOR}/_dev/phone-code`, { appid: APP_ID, user: wx.user });
  const phone = await auth.getPhoneNumber({ detail: { code: minted.body.code, errMsg: 'getPhoneNumber:ok' } });
  assert.equal(phone.phone_number, '13800138000');
  assert.equal(phone.pure_phone_number, '13800138000');
  assert.equal(phone.country_code, '86');
  await assert.rejects(
    auth.getPhoneNumber({ detail: { code: minted.body.code } }),
    (error) => error instanceof WxLoginError && error.statusCode === 401 && error.reason === 'CODE_USED',
  );
});

test('a declined getPhoneNumber rejects without a request', async () => {
  const wx = fakeWx();
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx });
  await auth.login();
  const before = wx.calls.paths.length;
  await assert.rejects(
    auth.getPhoneNumber({ detail: { errMsg: 'getPhoneNumber:fail user deny' } }),
    (error) => error instanceof WxLoginError && error.reason === 'PHONE_NUMBER_DENIED',
  );
  assert.equal(wx.calls.paths.length, before);
});

test('decryptFresh: code first, then encryptedData, decrypts after the key changed', async () => {
  const wx = fakeWx();
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx });
  await auth.login();
  const fetchProfile = async () =>
    (await postJson(`${EMULATOR}/_dev/user-data`, { appid: APP_ID, user: wx.user, data: { nickName: 'Fresh' } })).body;
  // Another wx.login() (a pre-fetch, another page): WeChat replaced the session_key, and
  // data fetched now is under a key wxlogin has not seen. Without a code: stale.
  await new Promise((resolve, reject) => wx.login({ success: resolve, fail: reject }));
  await assert.rejects(
    auth.decryptUserData(await fetchProfile()),
    (error) => error instanceof WxLoginError && error.statusCode === 400 && error.reason === 'SESSION_KEY_STALE',
  );
  const { data } = await auth.decryptFresh(fetchProfile);
  assert.equal(data.nickName, 'Fresh');
  assert.equal(wx.calls.login, 3);
});

test('logout({ all: true }) ends every session of the user, on every device', async () => {
  const user = `node-user-${process.pid}-everywhere`;
  const phone = fakeWx({ user });
  const tablet = fakeWx({ user });
  const onPhone = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx: phone });
  const onTablet = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx: tablet });
  await onPhone.login();
  const { token: tabletToken } = await onTablet.login();
  const revoked = await onPhone.logout({ all: true });
  assert.equal(revoked, 2);
  assert.equal(phone.getStorageSync('wxlogin_token'), '');
  const check = await fetch(`${EDGE}/v1/session`, { headers: { Authorization: `Bearer ${tabletToken}` } });
  assert.equal(check.status, 401);
  assert.equal((await check.json()).error.reason, 'SESSION_INVALID');
});

test('a login whose answer was lost is retried with the same code and gets that session', async () => {
  const wx = fakeWx({ loseAnswers: 1 });
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx });
  const result = await auth.login();
  assert.equal(wx.calls.login, 1); // one code, sent twice
  assert.equal(logins(wx), 2);
  assert.equal(result.new_user, true); // the first request's answer, kept by wxlogin
  const res = await auth.request({ path: '/v1/session' });
  assert.equal(res.data.user.user_id, result.user.user_id);
});

test('WECHAT_UNAVAILABLE: login gets a fresh wx.login() code and tries again', async () => {
  // WeChat spends the code, then the answer is lost: wxlogin's own retry of that
  // code can only hear "used", so it answers WECHAT_UNAVAILABLE.
  const queued = await postJson(`${EMULATOR}/_dev/faults`, { drop: true, use_code: true, times: 1 });
  assert.equal(queued.status, 200);
  const wx = fakeWx();
  const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx, retryPauseMs: 1 });
  const result = await auth.login();
  assert.equal(wx.calls.login, 2); // the spent code, then a fresh one
  assert.equal(logins(wx), 2);
  assert.equal(wx.getStorageSync('wxlogin_token'), result.token);
});

test('WECHAT_UNAVAILABLE again and again: loginRetries fresh codes at most, then thrown', async () => {
  // WeChat busy (-1) for longer than wxlogin retries, for every login of this test.
  const queued = await postJson(`${EMULATOR}/_dev/faults`, { errcode: -1, times: 50 });
  assert.equal(queued.status, 200);
  try {
    const wx = fakeWx();
    const auth = createWxLogin({ baseUrl: EDGE, appId: APP_ID, wx, loginRetries: 1, retryPauseMs: 1 });
    await assert.rejects(
      auth.login(),
      (error) => error instanceof WxLoginError && error.statusCode === 503 && error.reason === 'WECHAT_UNAVAILABLE',
    );
    assert.equal(wx.calls.login, 2); // the first code and one fresh one, no more
    assert.equal(wx.getStorageSync('wxlogin_token'), '');
  } finally {
    await fetch(`${EMULATOR}/_dev/faults`, { method: 'DELETE' });
  }
});
