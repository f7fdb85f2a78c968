'use strict';
// The client against the LIVE service and emulator that tests/test_node_client.py starts.
const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const util = require('node:util');
const grpc = require('@grpc/grpc-js');
const wx = require('..');
const { env, QUICK_RETRY, fault, newUser, readFile, userData, wxCode } = require('./support');

const clients = [];
/** A client of the main service (callers file: this key may call everything). */
function client(options = {}) {
  const made = wx.connect(options.target || env.TARGET, { callerKey: env.CALLER_KEY, retry: QUICK_RETRY, ...options });
  clients.push(made);
  return made;
}
test.after(() => {
  for (const made of clients) made.close();
});

async function logIn(user = newUser()) {
  return client().login(await wxCode(user), { appId: env.APP_ID });
}

test('login opens a session that checkSession accepts, with the user', async () => {
  const user = newUser();
  const first = await client().login(await wxCode(user), { appId: env.APP_ID });
  assert.equal(first.newUser, true);
  assert.equal(first.user.appId, env.APP_ID);
  assert.ok(first.token.length >= 32);
  assert.ok(first.expiresAt instanceof Date && first.expiresAt > new Date());
  const session = await client().checkSession(first.token);
  assert.deepEqual(session.user, first.user);
  assert.equal(session.user.unionid, null);
  assert.equal(session.user.accountId, session.user.userId);
  const again = await client().login(await wxCode(user), { appId: env.APP_ID });
  assert.equal(again.newUser, false);
  assert.equal(again.user.userId, first.user.userId);
});

test('a login result never shows its token when logged', async () => {
  const login = await logIn();
  const shown = util.inspect(login);
  assert.ok(!shown.includes(login.token), shown);
  assert.match(shown, /<hidden>/);
});

test('an unknown or malformed token is SessionInvalid, an Unauthenticated', async () => {
  for (const token of ['wxl1_' + 'Z'.repeat(43), 'garbage']) {
    await assert.rejects(client().checkSession(token), (error) => {
      assert.ok(error instanceof wx.SessionInvalid, error);
      assert.ok(error instanceof wx.Unauthenticated);
      assert.ok(error instanceof wx.WxLoginError);
      assert.equal(error.reason, 'SESSION_INVALID');
      assert.equal(error.code, 'UNAUTHENTICATED');
      assert.equal(error.grpcCode, grpc.status.UNAUTHENTICATED);
      assert.equal(wx.httpStatus(error), 401);
      return true;
    });
  }
});

test('an expired token is SessionExpired', async () => {
  const short = client({ target: env.SHORT_TTL_TARGET, callerKey: undefined });
  const login = await short.login(await wxCode(newUser()), { appId: env.APP_ID });
  // That service's sessions live 1 s unused; pytest keeps mongod's TTL sweep paused meanwhile.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  await assert.rejects(short.checkSession(login.token), (error) => {
    assert.ok(error instanceof wx.SessionExpired, error);
    assert.equal(error.reason, 'SESSION_EXPIRED');
    return true;
  });
});

test('codes: a replayed one answers the same session, an unknown one is CodeInvalid, a bad app AppUnknown', async () => {
  const code = await wxCode(newUser());
  const first = await client().login(code, { appId: env.APP_ID });
  // wxlogin keeps a code's answer: a retry after a lost answer gets the same session.
  const replay = await client().login(code, { appId: env.APP_ID });
  assert.equal(replay.token, first.token);
  assert.equal(replay.newUser, true);
  await assert.rejects(client().login('no-such-code', { appId: env.APP_ID }), wx.CodeInvalid);
  await assert.rejects(client().login(await wxCode(newUser()), { appId: 'wxnosuchapp0000000' }), (error) => {
    assert.ok(error instanceof wx.AppUnknown && error instanceof wx.InvalidRequest, error);
    assert.equal(wx.httpStatus(error), 400);
    return true;
  });
});

test("ErrorInfo metadata arrives: WeChat's errcode on WECHAT_ERROR", async () => {
  await fault({ errcode: 40125, times: 1 });
  await assert.rejects(client().login(await wxCode(newUser()), { appId: env.APP_ID }), (error) => {
    assert.ok(error instanceof wx.WeChatError && error instanceof wx.Unavailable, error);
    assert.deepEqual(error.metadata, { errcode: '40125' });
    assert.equal(wx.httpStatus(error), 503);
    return true;
  });
});

test('decryptUserData returns the decrypted JSON and its watermark time', async () => {
  const user = newUser();
  const login = await client().login(await wxCode(user), { appId: env.APP_ID });
  const blob = await userData(user, { nickName: 'Node', gender: 1 });
  const decrypted = await client().decryptUserData(login.token, blob);
  assert.equal(decrypted.data.nickName, 'Node');
  assert.equal(decrypted.data.gender, 1);
  assert.equal(decrypted.data.watermark.appid, env.APP_ID);
  assert.ok(decrypted.watermarkTime instanceof Date);
  assert.equal(decrypted.watermarkTime.getTime(), decrypted.data.watermark.timestamp * 1000);
  await assert.rejects(client().decryptUserData(login.token, { ...blob, signature: 'f'.repeat(40) }), wx.SignatureMismatch);
  await assert.rejects(client().decryptUserData(login.token, { ...blob, iv: 'c2hvcnQ=' }), wx.BadRequest);
});

test('revokeSession logs out (idempotent); revokeAllSessions ends every session of the user', async () => {
  const login = await logIn();
  await client().revokeSession(login.token);
  await assert.rejects(client().checkSession(login.token), wx.SessionInvalid);
  await client().revokeSession(login.token); // again: fine
  const user = newUser();
  const one = await client().login(await wxCode(user), { appId: env.APP_ID });
  const two = await client().login(await wxCode(user), { appId: env.APP_ID });
  assert.equal(await client().revokeAllSessions({ token: one.token }), 2);
  await assert.rejects(client().checkSession(two.token), wx.SessionInvalid);
  await assert.rejects(client().revokeAllSessions({}), TypeError);
  await assert.rejects(client().revokeAllSessions({ token: 'a', userId: 'b' }), TypeError);
});

test('with a session cache, checkSession answers from memory; a revoke through the same client ends that at once', async () => {
  const cached = client({ sessionCache: new wx.SessionCache({ maxAgeMs: 60000 }) });
  const login = await logIn();
  const session = await cached.checkSession(login.token);
  assert.ok(Object.isFrozen(session) && Object.isFrozen(session.user));
  assert.equal(cached.sessionCache.size, 1);
  await client().revokeSession(login.token); // revoked elsewhere
  await assert.rejects(client().checkSession(login.token), wx.SessionInvalid);
  // The price of the cache: up to maxAgeMs more here.
  assert.deepEqual(await cached.checkSession(login.token), session);
  await cached.revokeSession(login.token);
  await assert.rejects(cached.checkSession(login.token), wx.SessionInvalid);
  assert.equal(cached.sessionCache.size, 0, 'a rejected token is not remembered');
});

test("with a session cache, revokeAllSessions forgets every one of the user's tokens", async () => {
  const cached = client({ sessionCache: new wx.SessionCache({ maxAgeMs: 60000 }) });
  const user = newUser();
  const one = await cached.login(await wxCode(user), { appId: env.APP_ID });
  const two = await cached.login(await wxCode(user), { appId: env.APP_ID });
  await cached.checkSession(one.token);
  await cached.checkSession(two.token);
  assert.equal(await cached.revokeAllSessions({ token: one.token }), 2);
  await assert.rejects(cached.checkSession(one.token), wx.SessionInvalid);
  await assert.rejects(cached.checkSession(two.token), wx.SessionInvalid);
  // By a token this cache never saw: whose other tokens are cached is unknown, so none is served.
  const three = await cached.login(await wxCode(user), { appId: env.APP_ID });
  const four = await cached.login(await wxCode(user), { appId: env.APP_ID });
  await cached.checkSession(four.token);
  assert.equal(await cached.revokeAllSessions({ token: three.token }), 2);
  await assert.rejects(cached.checkSession(four.token), wx.SessionInvalid);
  assert.throws(() => client({ sessionCache: { maxAgeMs: 1000 } }), TypeError);
});

test('with a session cache, an expired session is never served from memory', async () => {
  const short = client({ target: env.SHORT_TTL_TARGET, callerKey: undefined, sessionCache: new wx.SessionCache({ maxAgeMs: 60000 }) });
  const login = await short.login(await wxCode(newUser()), { appId: env.APP_ID });
  await short.checkSession(login.token);
  await new Promise((resolve) => setTimeout(resolve, 1500)); // that service's sessions live 1 s unused
  await assert.rejects(short.checkSession(login.token), wx.SessionExpired);
});

test('the caller key is sent: refused without one or with an unknown one, limited by its grant', async () => {
  const login = await logIn();
  const noKey = client({ callerKey: undefined });
  const unknownKey = client({ callerKey: env.BAD_KEY });
  for (const refused of [noKey, unknownKey]) {
    await assert.rejects(refused.checkSession(login.token), (error) => {
      assert.ok(error instanceof wx.CallerUnauthenticated, error);
      // wxlogin refused the backend, not the user: no re-login, and a 500 over HTTP.
      assert.ok(error instanceof wx.CallerError && !(error instanceof wx.Unauthenticated));
      assert.equal(error.code, 'UNAUTHENTICATED');
      assert.equal(wx.httpStatus(error), 500);
      return true;
    });
  }
  const loginOnly = client({ callerKey: env.LOGIN_ONLY_KEY });
  await assert.rejects(loginOnly.checkSession(login.token), (error) => {
    assert.ok(error instanceof wx.CallerForbidden, error);
    assert.equal(error.reason, 'CALLER_FORBIDDEN');
    return true;
  });
  assert.ok((await loginOnly.login(await wxCode(newUser()), { appId: env.APP_ID })).token);
  assert.throws(() => wx.connect(env.TARGET, { callerKey: 'short' }), TypeError);
});

test('wxlogin unreachable is ServiceUnavailable after bounded retries, never an Unauthenticated', async () => {
  const down = client({ target: env.DOWN_TARGET });
  await assert.rejects(down.checkSession('wxl1_' + 'Z'.repeat(43)), (error) => {
    assert.ok(error instanceof wx.ServiceUnavailable, error);
    assert.equal(error.message, 'wxlogin is unreachable; retry later');
    assert.equal(wx.httpStatus(error), 503);
    return true;
  });
});

test('deadlines: the per-call one and the client-wide one both end a call that gets no answer', { timeout: 30000 }, async () => {
  // A server that accepts connections and never says a word.
  const held = [];
  const silent = net.createServer((socket) => held.push(socket));
  await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const target = `127.0.0.1:${silent.address().port}`;
  try {
    const patient = client({ target, deadlines: { checkSession: 60000 } });
    await assert.rejects(patient.checkSession('wxl1_x', { deadlineMs: 300 }), (error) => {
      assert.ok(error instanceof wx.DeadlineExceeded, error);
      assert.equal(error.message, 'wxlogin did not answer in time');
      assert.equal(wx.httpStatus(error), 504);
      return true;
    });
    const hasty = client({ target, deadlines: { checkSession: 300 } });
    await assert.rejects(hasty.checkSession('wxl1_x'), wx.DeadlineExceeded);
  } finally {
    for (const socket of held) socket.destroy();
    await new Promise((resolve) => silent.close(resolve));
  }
});

test('TLS: with our CA and a client certificate the call is answered; without either it is refused', async () => {
  const tls = wx.tlsFromFiles({ ca: env.TLS_CA, cert: env.TLS_CERT, key: env.TLS_KEY });
  // The target is an address; the certificate names localhost, as a real one names a host.
  const channelOptions = { 'grpc.ssl_target_name_override': 'localhost' };
  const secure = client({ target: env.TLS_TARGET, tls, callerKey: undefined, channelOptions });
  await assert.rejects(secure.checkSession('wxl1_' + 'Z'.repeat(43)), wx.SessionInvalid); // answered
  const login = await secure.login(await wxCode(newUser()), { appId: env.APP_ID });
  assert.equal((await secure.checkSession(login.token)).user.appId, env.APP_ID);
  const refused = [
    client({ target: env.TLS_TARGET, callerKey: undefined }), // plaintext
    client({ target: env.TLS_TARGET, callerKey: undefined, channelOptions, tls: { ca: readFile(env.TLS_CA) } }), // no client cert
    client({ target: env.TLS_TARGET, callerKey: undefined, channelOptions, tls: { ...tls, ca: readFile(env.OTHER_CA) } }), // other CA
  ];
  for (const stranger of refused) {
    await assert.rejects(stranger.checkSession('wxl1_' + 'Z'.repeat(43)), wx.ServiceUnavailable);
  }
  assert.throws(() => wx.tlsFromFiles({ cert: env.TLS_CERT }), /needs its key/);
});

test('upstreamFromEnv reads the same variables as the Python client and names a bad one', () => {
  const read = wx.upstreamFromEnv({
    WXLOGIN_UPSTREAM: 'wxlogin.internal:443',
    WXLOGIN_UPSTREAM_CA: env.TLS_CA,
    WXLOGIN_UPSTREAM_CERT: env.TLS_CERT,
    WXLOGIN_UPSTREAM_KEY: env.TLS_KEY,
    WXLOGIN_CALLER_KEY: env.CALLER_KEY,
  });
  assert.equal(read.target, 'wxlogin.internal:443');
  assert.deepEqual(read.tls.ca, readFile(env.TLS_CA));
  assert.equal(read.callerKey, env.CALLER_KEY);
  assert.deepEqual(wx.upstreamFromEnv({}), { target: '127.0.0.1:50051', tls: undefined, callerKey: undefined });
  const secret = 'not a key, has spaces';
  assert.throws(
    () => wx.upstreamFromEnv({ WXLOGIN_CALLER_KEY: secret }),
    (error) => error instanceof wx.ConfigError && error.variable === 'WXLOGIN_CALLER_KEY' && !error.message.includes(secret),
  );
  assert.throws(() => wx.upstreamFromEnv({ WXLOGIN_UPSTREAM_CERT: env.TLS_CERT }), /WXLOGIN_UPSTREAM_KEY/);
  assert.throws(() => wx.upstreamFromEnv({ WXLOGIN_UPSTREAM_CA: '/no/such/ca.pem' }), /WXLOGIN_UPSTREAM_CA: no such file/);
});

test('error mapping: unknown reasons fall back to their code, a reason under the wrong code trusts the code', () => {
  const newer = wx.errorFor('UNAUTHENTICATED', 'SOME_NEW_REASON', 'm');
  assert.equal(newer.constructor, wx.Unauthenticated);
  assert.equal(newer.reason, 'SOME_NEW_REASON');
  assert.equal(wx.errorFor('INTERNAL', 'SESSION_EXPIRED', 'm').constructor, wx.InternalError);
  assert.equal(wx.errorFor('NOT_FOUND', null).constructor, wx.InternalError);
  for (const [reason, cls] of wx.BY_REASON) {
    const made = wx.errorFor(cls.code, reason, 'm');
    assert.equal(made.constructor, cls, reason);
    assert.equal(made.name, cls.name);
  }
  // A garbled grpc-status-details-bin is as good as none.
  const metadata = new grpc.Metadata();
  metadata.set('grpc-status-details-bin', Buffer.from([0xff, 0xff, 0xff]));
  const garbled = wx.fromServiceError({ code: grpc.status.UNAVAILABLE, details: 'x', metadata });
  assert.equal(garbled.constructor, wx.ServiceUnavailable);
});
