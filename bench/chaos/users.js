'use strict';
// Simulated mini-program users for `make chaos` (a): the REAL sample code,
// clients/miniprogram/wxlogin.js, with a stub `wx` whose wx.login() asks the
// emulator for a fresh code and whose wx.request() is a real HTTP request to the
// edge. `lanes` users at a time, each one after the other in its lane, until
// `seconds` are up; each user opens the app (GET /v1/session through
// auth.request, which logs in first, with the sample's own recovery) and counts
// as logged in if that answered 200 within `deadlineMs`.
//
//   node bench/chaos/users.js '{"edge":"http://127.0.0.1:8080","emulator":"http://127.0.0.1:9090",
//                              "appId":"wx...","lanes":16,"seconds":30,"deadlineMs":5000}'
//
// Prints one JSON line (the figures) and exits 0; exits 2 on bad arguments.
// Bounded: no user starts after `seconds`, every request gives up after
// REQUEST_TIMEOUT_MS, and the process exits at most GRACE_MS after the last start.
const path = require('node:path');
const { createWxLogin } = require(path.join(__dirname, '..', '..', 'clients', 'miniprogram', 'wxlogin.js'));

const REQUEST_TIMEOUT_MS = 10_000;
const GRACE_MS = 15_000;
const MAX_USERS = 100_000;

function parseArgs() {
  let options;
  try {
    options = JSON.parse(process.argv[2] || '');
  } catch (error) {
    process.stderr.write(`users.js: expected one JSON argument: ${error.message}\n`);
    process.exit(2);
  }
  for (const name of ['edge', 'emulator', 'appId']) {
    if (typeof options[name] !== 'string' || !options[name]) {
      process.stderr.write(`users.js: "${name}" is required\n`);
      process.exit(2);
    }
  }
  return {
    lanes: 16,
    seconds: 30,
    deadlineMs: 5000,
    prefix: `chaos-user-${process.pid}`,
    ...options,
  };
}

async function readJson(response) {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return text; // like wx.request: a body that is not JSON stays a string
  }
}

/** The `wx` of one user: wx.login() plays WeChat through the emulator, counted. */
function stubWx(options, user) {
  const storage = new Map();
  const counts = { wxLogin: 0, loginRequests: 0 };
  return {
    counts,
    login({ success, fail }) {
      counts.wxLogin += 1;
      fetch(`${options.emulator}/_dev/login`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ appid: options.appId, user }),
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      })
        .then(readJson)
        .then(
          (body) => success({ code: body.code, errMsg: 'login:ok' }),
          (error) => fail({ errMsg: `login:fail ${error.message}` }),
        );
    },
    request({ url, method = 'GET', data, header = {}, success, fail }) {
      if (new URL(url).pathname === '/v1/login') counts.loginRequests += 1;
      const init = { method, headers: { ...header }, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) };
      if (data !== undefined && method !== 'GET') {
        init.body = JSON.stringify(data);
        init.headers['content-type'] = 'application/json';
      }
      fetch(url, init)
        .then(async (response) =>
          success({ statusCode: response.status, data: await readJson(response), header: {} }),
        )
        .catch((error) => fail({ errMsg: `request:fail ${error.message}` }));
    },
    getStorageSync: (key) => (storage.has(key) ? storage.get(key) : ''),
    setStorageSync: (key, value) => storage.set(key, value),
    removeStorageSync: (key) => storage.delete(key),
  };
}

/** One user opening the app; resolves with its outcome (never rejects). */
async function oneUser(options, user, outcomes) {
  const wx = stubWx(options, user);
  const auth = createWxLogin({ baseUrl: options.edge, appId: options.appId, wx });
  const started = performance.now();
  const outcome = { ok: false, inTime: false, ms: 0, reason: '', wxLogin: 0, loginRequests: 0 };
  try {
    const res = await auth.request({ path: '/v1/session' });
    outcome.ok = res.statusCode === 200 && Boolean(res.data && res.data.user);
    if (!outcome.ok) outcome.reason = `HTTP ${res.statusCode}`;
  } catch (error) {
    outcome.reason = error.reason || error.message.split(':')[0];
  }
  outcome.ms = performance.now() - started;
  outcome.inTime = outcome.ok && outcome.ms <= options.deadlineMs;
  if (outcome.ok && !outcome.inTime) outcome.reason = 'LATE';
  outcome.wxLogin = wx.counts.wxLogin;
  outcome.loginRequests = wx.counts.loginRequests;
  outcomes.push(outcome);
}

function nearestRank(sorted, share) {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(share * sorted.length) - 1))];
}

function histogram(values) {
  const counted = {};
  for (const value of values) counted[value] = (counted[value] || 0) + 1;
  return counted;
}

function summary(options, outcomes, started, wallSeconds) {
  const inTime = outcomes.filter((outcome) => outcome.inTime).length;
  const times = outcomes.map((outcome) => outcome.ms).sort((a, b) => a - b);
  // A user still waiting when the run ended is one who did not get in.
  const failures = started > outcomes.length ? { UNFINISHED: started - outcomes.length } : {};
  for (const outcome of outcomes) {
    if (!outcome.inTime) failures[outcome.reason] = (failures[outcome.reason] || 0) + 1;
  }
  const round = (ms) => Math.round(ms * 10) / 10;
  return {
    users: started,
    logged_in_in_time: inTime,
    logged_in_share: started ? Math.round((inTime / started) * 10000) / 10000 : 0,
    logged_in_at_all: outcomes.filter((outcome) => outcome.ok).length,
    failures,
    // How many wx.login() codes each user needed (1: no recovery), and /v1/login requests.
    wx_login_per_user: histogram(outcomes.map((outcome) => outcome.wxLogin)),
    login_requests: outcomes.reduce((sum, outcome) => sum + outcome.loginRequests, 0),
    p50_ms: round(nearestRank(times, 0.5)),
    p90_ms: round(nearestRank(times, 0.9)),
    p99_ms: round(nearestRank(times, 0.99)),
    max_ms: round(times.length ? times[times.length - 1] : 0),
    lanes: options.lanes,
    seconds: options.seconds,
    deadline_ms: options.deadlineMs,
    wall_seconds: Math.round(wallSeconds * 10) / 10,
    node: process.version,
  };
}

async function main() {
  const options = parseArgs();
  const outcomes = [];
  const begun = performance.now();
  const until = begun + options.seconds * 1000;
  let started = 0;
  async function lane(number) {
    while (performance.now() < until && started < MAX_USERS) {
      started += 1;
      await oneUser(options, `${options.prefix}-${number}-${started}`, outcomes);
    }
  }
  const lanes = Promise.all(Array.from({ length: options.lanes }, (_, number) => lane(number)));
  // A user still waiting GRACE_MS after the last start is given up on, not waited for.
  let timer;
  const grace = new Promise((resolve) => {
    timer = setTimeout(resolve, options.seconds * 1000 + GRACE_MS);
  });
  await Promise.race([lanes, grace]);
  clearTimeout(timer);
  const result = summary(options, [...outcomes], started, (performance.now() - begun) / 1000);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

main();
