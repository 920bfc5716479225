// How values from the admin API read on the page: dates in the browser's locale, counts,
// prefixes, scopes, statuses, limits. Pure functions (no DOM), unit-tested in the browser.

/** What `*` reads as wherever a scope is shown. */
export const ALL_SCOPES_LABEL = 'Full Access (all scopes)';

/** The status badge's words (SPEC §6: Active green, Expired yellow, Revoked red). */
export const STATUS_LABELS = { active: 'Active', expired: 'Expired', revoked: 'Revoked' };

/** `Never` when there is no time (a key never used, or one that does not expire). */
export const NEVER = 'Never';

function parse(iso) {
  if (!iso) return null;
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** A date in the browser's locale, e.g. `Dec 1, 2026`; `fallback` when there is none. */
export function formatDate(iso, { locale, timeZone, fallback = NEVER } = {}) {
  const d = parse(iso);
  if (!d) return fallback;
  return new Intl.DateTimeFormat(locale, { dateStyle: 'medium', timeZone }).format(d);
}

/** A date and time in the browser's locale, e.g. `Dec 1, 2026, 3:04 PM`. */
export function formatDateTime(iso, { locale, timeZone, fallback = NEVER, seconds = false } = {}) {
  const d = parse(iso);
  if (!d) return fallback;
  const opts = seconds
    ? { year: 'numeric', month: 'short', day: 'numeric', hour: 'numeric', minute: '2-digit', second: '2-digit', timeZone }
    : { dateStyle: 'medium', timeStyle: 'short', timeZone };
  return new Intl.DateTimeFormat(locale, opts).format(d);
}

const RELATIVE_STEPS = [
  ['second', 60], ['minute', 60], ['hour', 24], ['day', 30], ['month', 12], ['year', Infinity],
];

/** `3 minutes ago`, `in 2 days`, `now`: for `Last used`, with the exact time beside it. */
export function formatRelative(iso, { now = Date.now(), locale, fallback = NEVER } = {}) {
  const d = parse(iso);
  if (!d) return fallback;
  let amount = (d.getTime() - now) / 1000;
  const rtf = new Intl.RelativeTimeFormat(locale, { numeric: 'auto' });
  for (const [unit, size] of RELATIVE_STEPS) {
    if (Math.abs(amount) < size) return rtf.format(Math.round(amount), unit);
    amount /= size;
  }
  return rtf.format(Math.round(amount), 'year');
}

/** A UTC day of the usage endpoint (`2026-12-01`) as `Dec 1`, the same day in any time zone. */
export function formatDay(day, { locale, withYear = false } = {}) {
  const d = parse(`${day}T00:00:00Z`);
  if (!d) return String(day);
  const opts = { month: 'short', day: 'numeric', timeZone: 'UTC' };
  if (withYear) opts.year = 'numeric';
  return new Intl.DateTimeFormat(locale, opts).format(d);
}

/** A count with the locale's grouping: `12,345`. */
export function formatNumber(n, { locale } = {}) {
  return new Intl.NumberFormat(locale).format(Number(n) || 0);
}

/** A count and its noun, singular for one: `1 request`, `12,345 requests`. */
export function formatCount(n, noun, { locale } = {}) {
  return `${formatNumber(n, { locale })} ${Number(n) === 1 ? noun : `${noun}s`}`;
}

/** The displayed start of a secret, marked as a start: `kg_live_7Hq2…`. */
export function displayPrefix(prefix) {
  if (!prefix) return '—';
  return prefix.endsWith('…') ? prefix : `${prefix}…`;
}

/** A scope as people read it: its catalogue label, `Full Access (all scopes)` for `*`, else its name. */
export function scopeLabel(scope, catalogue) {
  if (scope === '*') return ALL_SCOPES_LABEL;
  const entry = catalogue?.scopes?.find((s) => s.name === scope);
  return entry?.label || scope;
}

/** The `Scopes` column: each scope's label, then the role, e.g. `['Sessions (Read)', 'Role: viewer']`. */
export function scopeSummary(key, catalogue) {
  const parts = (key.scopes ?? []).map((s) => scopeLabel(s, catalogue));
  if (key.role) parts.push(`Role: ${key.role}`);
  return parts;
}

/** The badge's word for a status. */
export function statusLabel(status) {
  return STATUS_LABELS[status] ?? String(status);
}

const UNIT_SECONDS = {
  ms: 0.001, msec: 0.001, s: 1, sec: 1, secs: 1, second: 1, seconds: 1,
  m: 60, min: 60, mins: 60, minute: 60, minutes: 60,
  h: 3600, hr: 3600, hrs: 3600, hour: 3600, hours: 3600,
  d: 86400, day: 86400, days: 86400, w: 604800, week: 604800, weeks: 604800,
};

/** Seconds in a duration as the API writes it (`1s`, `1m`, `24h`, `1day`, `1h 30m`); null if unreadable. */
export function durationSeconds(text) {
  if (typeof text !== 'string') return null;
  const parts = text.trim().matchAll(/(\d+(?:\.\d+)?)\s*([a-z]+)/gi);
  let total = 0;
  let rest = text.trim();
  for (const [whole, n, unit] of parts) {
    const size = UNIT_SECONDS[unit.toLowerCase()];
    if (size === undefined) return null;
    total += Number(n) * size;
    rest = rest.replace(whole, '');
  }
  return rest.trim() === '' && text.trim() !== '' ? total : null;
}

const PERIOD_WORDS = [[1, 'second'], [60, 'minute'], [3600, 'hour'], [86400, 'day']];

/** `100 requests per second`; `100 requests per 10s` for a period without a word. */
export function describeRateLimit(limit, { locale } = {}) {
  if (!limit) return 'Default (workspace, route or role)';
  const secs = durationSeconds(limit.period);
  const word = PERIOD_WORDS.find(([size]) => size === secs)?.[1];
  let text = `${formatCount(limit.requests, 'request', { locale })} per ${word ?? limit.period}`;
  if (limit.burst) text += `, bursts of ${formatNumber(limit.burst, { locale })}`;
  return text;
}

/** `10,000 requests a month`, `500 requests a day`, `1,000 requests in total`. */
export function describeQuota(quota, { locale } = {}) {
  if (!quota) return 'Default (workspace or role)';
  const n = formatCount(quota.limit, 'request', { locale });
  switch (quota.refill) {
    case 'daily': return `${n} a day`;
    case 'monthly': return `${n} a month${quota.refill_day && quota.refill_day !== 1 ? ` (refills on day ${quota.refill_day})` : ''}`;
    default: return `${n} in total`;
  }
}

/** An audit action as a phrase: `key.create` → `Created key`. Unknown actions read as sent. */
export function describeAction(action) {
  const known = {
    'key.create': 'Created key', 'key.import': 'Imported key', 'key.update': 'Edited key',
    'key.rotate': 'Rotated key', 'key.revoke': 'Revoked key', 'key.delete': 'Deleted key',
    'workspace.created': 'Created workspace', 'workspace.updated': 'Changed workspace',
    'workspace.deleted': 'Deleted workspace', 'admin.refused': 'Refused call',
  };
  return known[action] ?? action;
}

/** The request-log `code` as shown: `Forwarded`, else the refusal code itself (`key_revoked`). */
export function describeLogCode(code) {
  return code === 'forwarded' ? 'Forwarded' : String(code ?? '');
}

/** A latency in milliseconds: `12 ms`, `1.2 s`. */
export function formatLatency(ms, { locale } = {}) {
  const n = Number(ms);
  if (!Number.isFinite(n)) return '—';
  if (n >= 1000) return `${new Intl.NumberFormat(locale, { maximumFractionDigits: 1 }).format(n / 1000)} s`;
  return `${new Intl.NumberFormat(locale, { maximumFractionDigits: 0 }).format(n)} ms`;
}

/** A whole number of seconds in the largest exact unit: `7 days`, `24 hours`, `90 seconds`, `none`. */
export function formatSeconds(total) {
  const n = Math.round(Number(total) || 0);
  if (n <= 0) return 'none';
  for (const [size, unit] of [[86400, 'day'], [3600, 'hour'], [60, 'minute'], [1, 'second']]) {
    if (n % size === 0) {
      const count = n / size;
      return `${count} ${unit}${count === 1 ? '' : 's'}`;
    }
  }
  return `${n} seconds`;
}
