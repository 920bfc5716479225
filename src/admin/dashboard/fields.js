// The key form's values and the admin API's key fields, both ways: the create body, the PATCH
// of an edit (only what changed), and which input an API error's `field` belongs beside.
// Pure functions (no DOM), unit-tested in the browser.

import { durationSeconds } from './format.js';

/** `Grace period` choices of the Rotate dialog: label and the API's `grace_period`. */
export const GRACE_PERIODS = [
  ['None', '0s'], ['1 hour', '1h'], ['24 hours', '24h'], ['7 days', '168h'],
];

/** Rate-limit periods offered: label, the API's `period`, seconds. */
export const RATE_PERIODS = [
  ['per second', '1s', 1], ['per minute', '1m', 60], ['per hour', '1h', 3600], ['per day', '24h', 86400],
];

/** Quota refills offered: label and the API's `refill`. */
export const REFILLS = [['No refill', 'none'], ['Daily', 'daily'], ['Monthly', 'monthly']];

/** Scopes typed by hand: split on commas and white space, without repeats. */
export function splitScopes(text) {
  return [...new Set(String(text ?? '').split(/[\s,]+/).filter(Boolean))];
}

/** The `IP allowlist` text, one address or CIDR per line: the entries and each one's line number. */
export function parseAllowlist(text) {
  const entries = [];
  const lines = [];
  String(text ?? '').split(/\r?\n/).forEach((line, i) => {
    const entry = line.trim();
    if (entry) {
      entries.push(entry);
      lines.push(i + 1);
    }
  });
  return { entries, lines };
}

const pad = (n) => String(n).padStart(2, '0');

/** A local calendar day as `YYYY-MM-DD` (the value of an `<input type=date>`). */
export function localDay(date) {
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

/**
 * The `Expiry date` as the API's `expires_at`: the end of that day in the browser's time zone
 * (the key works through the day chosen), RFC 3339 in UTC; null for none.
 */
export function expiryToApi(day) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(String(day ?? '').trim());
  if (!m) return null;
  const end = new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]), 23, 59, 59);
  return end.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** The API's `expires_at` as the local day shown in `Expiry date`; '' for none. */
export function expiryFromApi(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? '' : localDay(d);
}

/** The form's values for a key (an edit starts from these), scopes split by the catalogue. */
export function formFromKey(key, catalogue) {
  const known = new Set((catalogue?.scopes ?? []).map((s) => s.name));
  const scopes = key?.scopes ?? [];
  const rate = key?.rate_limit;
  return {
    name: key?.name ?? '',
    description: key?.description ?? '',
    scopes: scopes.filter((s) => known.has(s)),
    extraScopes: scopes.filter((s) => !known.has(s)).join(' '),
    role: key?.role ?? '',
    expires: expiryFromApi(key?.expires_at),
    ipAllowlist: (key?.ip_allowlist ?? []).join('\n'),
    rateRequests: rate ? String(rate.requests) : '',
    ratePeriod: rate ? rate.period : '1s',
    quotaLimit: key?.quota ? String(key.quota.limit) : '',
    quotaRefill: key?.quota ? key.quota.refill : 'none',
  };
}

const number = (text) => (/^\d+$/.test(String(text).trim()) ? Number(text) : String(text).trim());

/** Every field of the form as the API takes it, `null` where the form is empty. */
function apiFields(v) {
  const scopes = [...new Set([...(v.scopes ?? []), ...splitScopes(v.extraScopes)])];
  const rate = String(v.rateRequests ?? '').trim();
  const quota = String(v.quotaLimit ?? '').trim();
  return {
    name: String(v.name ?? '').trim(),
    description: String(v.description ?? '').trim() || null,
    scopes,
    role: v.role || null,
    expires_at: expiryToApi(v.expires),
    ip_allowlist: parseAllowlist(v.ipAllowlist).entries,
    rate_limit: rate ? { requests: number(rate), period: v.ratePeriod || '1s' } : null,
    quota: quota ? { limit: number(quota), refill: v.quotaRefill || 'none' } : null,
  };
}

/** The body of `POST …/keys`: the fields given, empty ones left out. */
export function createBody(values) {
  const body = {};
  for (const [k, v] of Object.entries(apiFields(values))) {
    if (v === null || (Array.isArray(v) && v.length === 0)) continue;
    body[k] = v;
  }
  return body;
}

/** What a field compares by: scopes as a set, expiry by day, periods by length. */
function comparable(name, value, values) {
  switch (name) {
    case 'scopes': return JSON.stringify([...value].sort());
    case 'expires_at': return values.expires || '';
    case 'rate_limit':
      return value ? JSON.stringify([value.requests, periodKey(value.period)]) : 'null';
    default: return JSON.stringify(value);
  }
}

function periodKey(period) {
  return durationSeconds(period) ?? period;
}

/** The body of `PATCH …/keys/{id}`: the fields that differ from `before` (`null` clears one). */
export function patchBody(before, after) {
  const a = apiFields(before);
  const b = apiFields(after);
  const patch = {};
  for (const name of Object.keys(b)) {
    if (comparable(name, a[name], before) !== comparable(name, b[name], after)) patch[name] = b[name];
  }
  return patch;
}

/**
 * Where an API error's `field` is shown: the form input it belongs to and a prefix for the
 * message (`Line 3: ` for an allowlist entry); null when it belongs to no input (a banner).
 */
export function errorTarget(apiField, values) {
  if (!apiField) return null;
  const f = String(apiField);
  const simple = { name: 'name', description: 'description', role: 'role', expires_at: 'expires', grace_period: 'gracePeriod' };
  if (simple[f]) return { input: simple[f], prefix: '' };
  if (f === 'scopes' || /^scopes\[\d+\]$/.test(f)) return { input: 'scopes', prefix: '' };
  if (f === 'ip_allowlist') return { input: 'ipAllowlist', prefix: '' };
  const entry = /^ip_allowlist\[(\d+)\]$/.exec(f);
  if (entry) {
    const line = parseAllowlist(values?.ipAllowlist).lines[Number(entry[1])];
    return { input: 'ipAllowlist', prefix: line ? `Line ${line}: ` : '' };
  }
  if (f === 'rate_limit' || f.startsWith('rate_limit.')) return { input: 'rateLimit', prefix: '' };
  if (f === 'quota' || f.startsWith('quota.')) return { input: 'quota', prefix: '' };
  return null;
}
