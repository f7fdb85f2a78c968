'use strict';
/**
 * How a wxlogin failure looks over HTTP: the gRPC -> HTTP status mapping and the JSON body of
 * clients/http_errors.py, so a Node backend answers exactly as the edge and Python backends do.
 *
 *   INVALID_ARGUMENT 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, FAILED_PRECONDITION 400,
 *   RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, anything else 500;
 *   CALLER_UNAUTHENTICATED and CALLER_FORBIDDEN are pinned to 500 (the backend is refused,
 *   not the user: a 401 would send a mini-program to log in again, which can never help).
 *
 * Body: {"error": {"code": "<gRPC code name>", "reason": "<reason>", "message": "<text>"}}.
 */

const BY_CODE = new Map([
  ['INVALID_ARGUMENT', 400],
  ['UNAUTHENTICATED', 401],
  ['PERMISSION_DENIED', 403],
  // google.rpc's own mapping; the body's reason says which step comes first.
  ['FAILED_PRECONDITION', 400],
  ['RESOURCE_EXHAUSTED', 429],
  ['UNAVAILABLE', 503],
  ['DEADLINE_EXCEEDED', 504],
]);
// RFC 6750: a 401 tells the client which scheme to use.
const CHALLENGE = 'Bearer realm="wxlogin"';

/** The HTTP status for a wxlogin failure. */
function httpStatus(error) {
  return error.constructor.httpStatus || BY_CODE.get(error.code) || 500;
}

/** The JSON error body of the contract. */
function errorBody(code, reason, message) {
  return { error: { code, reason, message } };
}

/** Answer a node:http (or Express) response with the JSON error for a wxlogin failure. */
function sendError(res, error, headers = {}) {
  const status = httpStatus(error);
  const all = { ...headers };
  if (status === 401 && all['www-authenticate'] === undefined) all['www-authenticate'] = CHALLENGE;
  const body = JSON.stringify(errorBody(error.code, error.reason, error.message));
  res.writeHead(status, {
    ...all,
    // What aiohttp's json_response sends.
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

module.exports = { CHALLENGE, errorBody, httpStatus, sendError };
