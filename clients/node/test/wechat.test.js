'use strict';
// The RPCs behind WeChat's server APIs (phone number, access_token, session_key), against the
// LIVE service and emulator that tests/test_node_client.py starts.
const test = require('node:test');
const assert = require('node:assert/strict');
const util = require('node:util');
const wx = require('..');
const { env, QUICK_RETRY, newUser, phoneCode, wxCode } = require('./support');

const clients = [];
function client() {
  const made = wx.connect(env.TARGET, { callerKey: env.CALLER_KEY, retry: QUICK_RETRY });
  clients.push(made);
  return made;
}
test.after(() => {
  for (const made of clients) made.close();
});

async function logIn(user) {
  return client().login(await wxCode(user), { appId: env.APP_ID });
}

test('getPhoneNumber answers the user\'s number once; the same phone code again is CodeUsed', async () => {
  const user = newUser('phone');
  const { token } = await logIn(user);
  const code = await phoneCode(user, '13800138000');
  const number = await client().getPhoneNumber(token, code);
  assert.equal(number.purePhoneNumber, '13800138000');
  assert.equal(number.countryCode, '86');
  // As WeChat answers: a mainland number without its area code (foreign ones carry it).
  assert.equal(number.phoneNumber, '13800138000');
  assert.ok(number.watermarkTime instanceof Date);
  await assert.rejects(client().getPhoneNumber(token, code), (error) => {
    assert.ok(error instanceof wx.CodeUsed, error);
    assert.equal(error.reason, 'CODE_USED');
    return true;
  });
});

test('getPhoneNumber with a session that does not exist is SessionInvalid, before WeChat', async () => {
  const user = newUser('phone');
  await assert.rejects(client().getPhoneNumber('wxl1_' + 'Z'.repeat(43), await phoneCode(user)), wx.SessionInvalid);
});

test('checkSessionKey says the key of the latest login is current, and the older one not', async () => {
  const user = newUser('key');
  const first = await logIn(user);
  assert.equal(await client().checkSessionKey(first.token), true);
  // A new wx.login() gives the user a new session_key at WeChat; wxlogin's latest login holds it.
  const second = await logIn(user);
  assert.equal(await client().checkSessionKey(second.token), true);
});

test('resetSessionKey succeeds and the session key stays current', async () => {
  const user = newUser('reset');
  const { token } = await logIn(user);
  await client().resetSessionKey(token);
  assert.equal(await client().checkSessionKey(token), true);
});

test('getAccessToken needs a caller granted it by name: "*" is not enough', async () => {
  await assert.rejects(client().getAccessToken(env.APP_ID), (error) => {
    assert.ok(error instanceof wx.CallerForbidden, error);
    assert.ok(error instanceof wx.CallerError);
    return true;
  });
});

test('getAccessToken gives a caller granted it the app\'s token, the same one again, never shown when logged', async () => {
  const reader = wx.connect(env.TARGET, { callerKey: env.TOKEN_READER_KEY, retry: QUICK_RETRY });
  clients.push(reader);
  const token = await reader.getAccessToken(env.APP_ID);
  assert.ok(typeof token.accessToken === 'string' && token.accessToken.length > 0);
  assert.ok(token.expiresAt instanceof Date && token.expiresAt > new Date());
  assert.equal((await reader.getAccessToken(env.APP_ID)).accessToken, token.accessToken);
  const shown = util.inspect(token);
  assert.ok(!shown.includes(token.accessToken), shown);
  assert.match(shown, /<hidden>/);
});

test('the new calls have their own default deadlines', () => {
  for (const name of ['getPhoneNumber', 'getAccessToken', 'checkSessionKey', 'resetSessionKey']) {
    assert.equal(wx.DEFAULT_DEADLINES[name], 10000, name);
  }
});
