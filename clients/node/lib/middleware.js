'use strict';
/**
 * bearerAuth(client): authenticate `Authorization: Bearer` through CheckSession, the Node twin of
 * the Python `bearer_auth` (clients/aiohttp_auth.py): the same answers, byte for byte in meaning.
 *
 *   no or malformed Authorization     401 UNAUTHENTICATED SESSION_INVALID (+ WWW-Authenticate)
 *   unknown, revoked, expired token   401 SESSION_INVALID / SESSION_EXPIRED, as wxlogin says
 *   wxlogin unreachable               503 SERVICE_UNAVAILABLE: never a 401, so an outage of
 *                                     ours never sends every user to log in again
 *   wxlogin too slow                  504 DEADLINE_EXCEEDED
 *   wxlogin refuses this backend      500 CALLER_UNAUTHENTICATED / CALLER_FORBIDDEN
 *   a live session                    req.wxloginUser = the User, req.wxloginSession = the
 *                                     session (user, expiresAt); then next()
 *
 * Connect-style `(req, res, next)`, so it is Express middleware (`app.use(bearerAuth(client))`)
 * without depending on Express, and plain node:http can call it too. Anything that is not a
 * wxlogin failure (a bug) goes to `next(error)`, Express's error handler.
 */

const { bearerToken } = require('./bearer');
const { SessionInvalid, WxLoginError } = require('./errors');
const { sendError } = require('./http-errors');

function nothingIsPublic() {
  return false;
}

function firstHeader(req, name) {
  // headersDistinct keeps repeated headers apart, as aiohttp's headers.get() takes the first.
  const distinct = req.headersDistinct && req.headersDistinct[name];
  if (distinct && distinct.length > 0) return distinct[0];
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * @param {import('./client').WxLoginClient} client
 * @param {{ public?: (req) => boolean }} [options] requests for which public(req) is true pass
 *   through unauthenticated
 */
function bearerAuth(client, { public: isPublic = nothingIsPublic } = {}) {
  return function authenticate(req, res, next) {
    if (isPublic(req)) return next();
    const token = bearerToken(firstHeader(req, 'authorization'));
    if (token === null) {
      sendError(res, new SessionInvalid('send the login token as Authorization: Bearer <token>'));
      return undefined;
    }
    return client.checkSession(token, { requestId: firstHeader(req, 'x-request-id') }).then(
      (session) => {
        req.wxloginUser = session.user;
        req.wxloginSession = session;
        next();
      },
      (error) => {
        if (error instanceof WxLoginError) sendError(res, error);
        else next(error);
      },
    );
  };
}

module.exports = { bearerAuth };
