'use strict';
/** The one reading of `Authorization: Bearer <token>`, as clients/_bearer.py reads it. */

const SCHEME = 'bearer';

/** The token of a Bearer credential (scheme case-insensitive, RFC 6750), else null. */
function bearerToken(authorization) {
  if (!authorization) return null;
  const value = authorization.trim();
  const space = value.indexOf(' ');
  const scheme = space === -1 ? value : value.slice(0, space);
  const token = space === -1 ? '' : value.slice(space + 1).trim();
  if (scheme.toLowerCase() !== SCHEME || !token) return null;
  return token;
}

module.exports = { bearerToken };
