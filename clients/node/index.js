'use strict';
/**
 * @wxlogin/client: wxlogin for Node.js backends.
 *
 *   const { bearerAuth, connect, upstreamFromEnv } = require('@wxlogin/client');
 *   const { target, ...options } = upstreamFromEnv(process.env);
 *   app.use(bearerAuth(connect(target, options)));   // req.wxloginUser, or 401 JSON
 */

const client = require('./lib/client');
const errors = require('./lib/errors');
const httpErrors = require('./lib/http-errors');
const { bearerToken } = require('./lib/bearer');
const { bearerAuth } = require('./lib/middleware');
const { SessionCache } = require('./lib/session-cache');
const upstream = require('./lib/upstream');

module.exports = {
  ...errors,
  connect: client.connect,
  WxLoginClient: client.WxLoginClient,
  SessionCache,
  DEFAULT_DEADLINES: client.DEFAULT_DEADLINES,
  DEFAULT_RETRY: client.DEFAULT_RETRY,
  bearerAuth,
  bearerToken,
  httpStatus: httpErrors.httpStatus,
  errorBody: httpErrors.errorBody,
  sendError: httpErrors.sendError,
  CALLER_KEY_METADATA: upstream.CALLER_KEY_METADATA,
  ConfigError: upstream.ConfigError,
  isCallerKey: upstream.isCallerKey,
  tlsFromFiles: upstream.tlsFromFiles,
  upstreamFromEnv: upstream.upstreamFromEnv,
};
