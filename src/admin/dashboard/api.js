// The admin API, called with the signed-in caller's token, and that token's one home: the
// tab's sessionStorage (never a cookie, localStorage or the URL). Nothing here logs.

const TOKEN = 'keygate.token';
const WORKSPACE = 'keygate.workspace';

/** The sign-in of this browser tab. */
export const session = {
  token: () => sessionStorage.getItem(TOKEN),
  signIn: (token) => sessionStorage.setItem(TOKEN, token),
  /** Forgets everything the dashboard kept in this tab. */
  signOut: () => sessionStorage.clear(),
  workspace: () => sessionStorage.getItem(WORKSPACE),
  setWorkspace: (name) => sessionStorage.setItem(WORKSPACE, name),
};

/** A refusal from the API (`{"error": {code, message, request_id, field?}}`) or no answer at all. */
export class ApiError extends Error {
  constructor(status, body) {
    const e = body?.error ?? {};
    super(e.message || (status ? `The request failed (HTTP ${status}).` : 'The gateway cannot be reached.'));
    this.name = 'ApiError';
    this.status = status;
    this.code = e.code ?? (status ? 'http_error' : 'network');
    this.field = e.field ?? null;
    this.requestId = e.request_id ?? null;
  }
}

let unauthorized = () => {};
/** Called when the stored token stops being accepted (revoked key, token removed from config). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

async function call(method, path, { body, token } = {}) {
  const bearer = token ?? session.token();
  const headers = { Accept: 'application/json' };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
      referrerPolicy: 'no-referrer',
    });
  } catch {
    throw new ApiError(0, null);
  }
  if (res.status === 204) return null;
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data);
    if (res.status === 401 && token === undefined) unauthorized(err);
    throw err;
  }
  return data;
}

const seg = encodeURIComponent;
const keysPath = (ws) => `/v1/workspaces/${seg(ws)}/keys`;
const keyPath = (ws, id) => `${keysPath(ws)}/${seg(id)}`;

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : '';
}

/** Every workspace the caller may see, all pages; `token` checks a token before it is kept. */
export async function listWorkspaces(token) {
  const all = [];
  let cursor = null;
  do {
    const page = await call('GET', `/v1/workspaces${query({ limit: 1000, cursor })}`, { token });
    all.push(...(page.workspaces ?? []));
    cursor = page.next_cursor ?? null;
  } while (cursor);
  return all;
}

export const getWorkspace = (ws) => call('GET', `/v1/workspaces/${seg(ws)}`);

/**
 * The scopes and roles the config knows, or null when they cannot be had (an older gateway, a
 * caller refused them): the key form then offers free entry only, which is no reason to fail.
 */
export async function scopeCatalogue() {
  try {
    return await call('GET', '/v1/scopes');
  } catch (e) {
    if (e.status === 401) throw e;
    return null;
  }
}

/** One page of keys: `{keys, next_cursor}`, newest first. */
export const listKeys = (ws, { status, cursor, limit = 50 } = {}) =>
  call('GET', `${keysPath(ws)}${query({ status, cursor, limit })}`);
export const getKey = (ws, id) => call('GET', keyPath(ws, id));
/** Creates a key; the answer carries `secret`, which the caller must drop once shown. */
export const createKey = (ws, body) => call('POST', keysPath(ws), { body });
export const updateKey = (ws, id, body) => call('PATCH', keyPath(ws, id), { body });
/** Rotates a key: `{key: new key + secret, previous}`. */
export const rotateKey = (ws, id, gracePeriod) =>
  call('POST', `${keyPath(ws, id)}/rotate`, { body: { grace_period: gracePeriod } });
export const revokeKey = (ws, id) => call('POST', `${keyPath(ws, id)}/revoke`);
export const deleteKey = (ws, id) => call('DELETE', keyPath(ws, id));
export const keyLogs = (ws, id, limit = 100) => call('GET', `${keyPath(ws, id)}/logs${query({ limit })}`);
export const keyUsage = (ws, id, days = 30) => call('GET', `${keyPath(ws, id)}/usage${query({ days })}`);
/** One page of the workspace's audit log: `{entries, next_cursor}`. */
export const auditLog = (ws, { cursor, limit = 50 } = {}) =>
  call('GET', `/v1/audit${query({ workspace: ws, limit, cursor })}`);
