// Unit tests of the dashboard's pure modules, run by tests/dashboard.rs inside the real browser
// on the served page (WebDriver execute_async): they import the very files keygate serves.
// Answers `{count, failures}` through the WebDriver callback, the last argument.
const done = arguments[arguments.length - 1];

(async () => {
  const format = await import('/assets/format.js');
  const pages = await import('/assets/pages.js');
  const fields = await import('/assets/fields.js');
  const chart = await import('/assets/chart.js');

  let count = 0;
  const failures = [];
  const eq = (name, actual, expected) => {
    count += 1;
    const a = JSON.stringify(actual);
    const e = JSON.stringify(expected);
    if (a !== e) failures.push(`${name}: got ${a}, want ${e}`);
  };
  const us = { locale: 'en-US', timeZone: 'UTC' };

  // format.js: dates in a given locale, `Never` for none, UTC days stay the same day.
  eq('formatDate en-US', format.formatDate('2026-12-01T10:00:00Z', us), 'Dec 1, 2026');
  eq('formatDate de-DE', format.formatDate('2026-12-01T10:00:00Z', { locale: 'de-DE', timeZone: 'UTC' }), '01.12.2026');
  eq('formatDate none', format.formatDate(null), 'Never');
  eq('formatDate invalid', format.formatDate('yesterday'), 'Never');
  eq('formatDate browser locale', format.formatDate('2026-12-01T10:00:00Z', { timeZone: 'UTC' }),
    new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeZone: 'UTC' }).format(new Date('2026-12-01T10:00:00Z')));
  eq('formatDateTime en-US', format.formatDateTime('2026-12-01T15:04:00Z', us), 'Dec 1, 2026, 3:04 PM');
  eq('formatDateTime de-DE', format.formatDateTime('2026-12-01T15:04:00Z', { locale: 'de-DE', timeZone: 'UTC' }), '01.12.2026, 15:04');
  eq('formatDateTime none', format.formatDateTime(undefined), 'Never');
  const now = Date.parse('2026-12-01T12:00:00Z');
  eq('formatRelative minutes', format.formatRelative('2026-12-01T11:57:00Z', { now, locale: 'en-US' }), '3 minutes ago');
  eq('formatRelative days ahead', format.formatRelative('2026-12-03T12:00:00Z', { now, locale: 'en-US' }), 'in 2 days');
  eq('formatRelative yesterday', format.formatRelative('2026-11-30T12:00:00Z', { now, locale: 'en-US' }), 'yesterday');
  eq('formatRelative never', format.formatRelative(null, { now }), 'Never');
  eq('formatDay', format.formatDay('2026-12-01', { locale: 'en-US' }), 'Dec 1');
  eq('formatDay with year', format.formatDay('2026-12-01', { locale: 'en-US', withYear: true }), 'Dec 1, 2026');
  eq('formatNumber en-US', format.formatNumber(1234567, { locale: 'en-US' }), '1,234,567');
  eq('formatNumber de-DE', format.formatNumber(12345, { locale: 'de-DE' }), '12.345');
  eq('formatNumber missing', format.formatNumber(undefined, { locale: 'en-US' }), '0');
  eq('formatCount', [0, 1, 2, 12345].map((n) => format.formatCount(n, 'request', { locale: 'en-US' })),
    ['0 requests', '1 request', '2 requests', '12,345 requests']);
  eq('displayPrefix', format.displayPrefix('kg_live_7Hq2'), 'kg_live_7Hq2…');
  eq('displayPrefix marked already', format.displayPrefix('kg_live_7Hq2…'), 'kg_live_7Hq2…');
  eq('displayPrefix none', format.displayPrefix(null), '—');

  const catalogue = {
    scopes: [{ name: 'sessions:read', label: 'Sessions (Read)' }, { name: 'resources:write', label: null }],
    roles: [{ name: 'viewer', scopes: ['sessions:read'] }],
  };
  eq('scopeLabel *', format.scopeLabel('*', catalogue), 'Full Access (all scopes)');
  eq('scopeLabel catalogue', format.scopeLabel('sessions:read', catalogue), 'Sessions (Read)');
  eq('scopeLabel no label', format.scopeLabel('resources:write', catalogue), 'resources:write');
  eq('scopeLabel no catalogue', format.scopeLabel('sessions:read', null), 'sessions:read');
  eq('scopeSummary', format.scopeSummary({ scopes: ['*', 'sessions:read'], role: 'viewer' }, catalogue),
    ['Full Access (all scopes)', 'Sessions (Read)', 'Role: viewer']);
  eq('statusLabel', ['active', 'expired', 'revoked'].map(format.statusLabel), ['Active', 'Expired', 'Revoked']);
  eq('durationSeconds', ['1s', '1m', '24h', '1day', '1h 30m', '500ms', 'soon', ''].map(format.durationSeconds),
    [1, 60, 86400, 86400, 5400, 0.5, null, null]);
  eq('describeRateLimit', format.describeRateLimit({ requests: 100, period: '1s' }, { locale: 'en-US' }), '100 requests per second');
  eq('describeRateLimit odd period', format.describeRateLimit({ requests: 5, period: '10s', burst: 20 }, { locale: 'en-US' }),
    '5 requests per 10s, bursts of 20');
  eq('describeRateLimit humantime day', format.describeRateLimit({ requests: 1000, period: '1day' }, { locale: 'en-US' }), '1,000 requests per day');
  eq('describeQuota', format.describeQuota({ limit: 10000, refill: 'monthly', refill_day: 1 }, { locale: 'en-US' }), '10,000 requests a month');
  eq('describeQuota daily', format.describeQuota({ limit: 500, refill: 'daily' }, { locale: 'en-US' }), '500 requests a day');
  eq('describeQuota none', format.describeQuota({ limit: 7, refill: 'none' }, { locale: 'en-US' }), '7 requests in total');
  eq('describeQuota one', format.describeQuota({ limit: 1, refill: 'daily' }, { locale: 'en-US' }), '1 request a day');
  eq('formatSeconds', [0, 90, 3600, 86400, 604800].map(format.formatSeconds), ['none', '90 seconds', '1 hour', '1 day', '7 days']);
  eq('formatLatency', [12.4, 1234, 'x'].map((n) => format.formatLatency(n, { locale: 'en-US' })), ['12 ms', '1.2 s', '—']);
  eq('describeLogCode', ['forwarded', 'key_revoked'].map(format.describeLogCode), ['Forwarded', 'key_revoked']);
  eq('describeAction', ['key.create', 'key.revoke', 'something.new'].map(format.describeAction), ['Created key', 'Revoked key', 'something.new']);

  // pages.js: pages append newest first, ids never repeat, filters apply, inserts find their place.
  const key = (id, t, status = 'active') => ({ id, created_at: `2026-12-01T00:00:${String(t).padStart(2, '0')}Z`, status });
  let list = pages.emptyList();
  eq('emptyList', list, { items: [], cursor: null, done: false });
  list = pages.mergePage(list, { items: [key('c', 30), key('b', 20, 'revoked')], next_cursor: 'n1' }, pages.isListed);
  eq('mergePage keeps listed', list.items.map((k) => k.id), ['c']);
  eq('mergePage cursor', [list.cursor, list.done], ['n1', false]);
  list = pages.mergePage(list, { items: [key('c', 30), key('a', 10)], next_cursor: null });
  eq('mergePage no repeats', list.items.map((k) => k.id), ['c', 'a']);
  eq('mergePage last page', [list.cursor, list.done], [null, true]);
  eq('insertItem newest first', pages.insertItem(list, key('d', 40)).items.map((k) => k.id), ['d', 'c', 'a']);
  eq('insertItem middle', pages.insertItem(list, key('m', 15)).items.map((k) => k.id), ['c', 'm', 'a']);
  eq('insertItem replaces', pages.insertItem(list, { ...key('c', 30), status: 'expired' }).items.map((k) => k.status), ['expired', 'active']);
  const partial = { items: [key('c', 30)], cursor: 'n', done: false };
  eq('insertItem leaves an older key to its page', pages.insertItem(partial, key('z', 5)).items.map((k) => k.id), ['c']);
  eq('insertItem after everything when done', pages.insertItem(list, key('z', 5)).items.map((k) => k.id), ['c', 'a', 'z']);
  eq('removeItem', pages.removeItem(list, 'c').items.map((k) => k.id), ['a']);
  eq('compareNewest tie by id', [key('x', 1), key('y', 1)].sort(pages.compareNewest).map((k) => k.id), ['y', 'x']);

  // fields.js: form ↔ API.
  eq('splitScopes', fields.splitScopes(' a:b, c:d  a:b\ne '), ['a:b', 'c:d', 'e']);
  eq('parseAllowlist', fields.parseAllowlist('10.0.0.1\n\n  10.0.0.0/8 \r\n'), { entries: ['10.0.0.1', '10.0.0.0/8'], lines: [1, 3] });
  eq('expiry none', [fields.expiryToApi(''), fields.expiryToApi('next week'), fields.expiryFromApi(null)], [null, null, '']);
  const expires = fields.expiryToApi('2027-01-31');
  eq('expiry is the end of the local day', [new Date(expires).getHours(), new Date(expires).getMinutes(), fields.localDay(new Date(expires))],
    [23, 59, '2027-01-31']);
  eq('expiry round trip', fields.expiryFromApi(expires), '2027-01-31');
  eq('expiry RFC 3339 without fraction', /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/.test(expires), true);
  const blank = fields.formFromKey(null, catalogue);
  eq('createBody minimal', fields.createBody({ ...blank, name: ' CI ' }), { name: 'CI' });
  eq('createBody full', fields.createBody({
    ...blank, name: 'n', description: 'd', scopes: ['sessions:read'], extraScopes: 'x:y, sessions:read', role: 'viewer',
    ipAllowlist: '1.2.3.4\n\n10.0.0.0/8', rateRequests: '100', ratePeriod: '1m', quotaLimit: '5000', quotaRefill: 'monthly',
  }), {
    name: 'n', description: 'd', scopes: ['sessions:read', 'x:y'], role: 'viewer', ip_allowlist: ['1.2.3.4', '10.0.0.0/8'],
    rate_limit: { requests: 100, period: '1m' }, quota: { limit: 5000, refill: 'monthly' },
  });
  const record = {
    name: 'Prod', description: null, scopes: ['sessions:read', 'custom:x'], role: null, expires_at: expires,
    ip_allowlist: ['1.2.3.4'], rate_limit: { requests: 100, period: '1m' }, quota: null,
  };
  const before = fields.formFromKey(record, catalogue);
  eq('formFromKey splits scopes', [before.scopes, before.extraScopes, before.expires], [['sessions:read'], 'custom:x', '2027-01-31']);
  eq('patchBody unchanged', fields.patchBody(before, { ...before }), {});
  eq('patchBody scopes as a set', fields.patchBody(before, { ...before, scopes: [], extraScopes: 'custom:x sessions:read' }), {});
  eq('patchBody changed and cleared', fields.patchBody(before, { ...before, name: 'Prod 2', ipAllowlist: '', rateRequests: '', expires: '' }),
    { name: 'Prod 2', expires_at: null, ip_allowlist: [], rate_limit: null });
  eq('patchBody description set', fields.patchBody(before, { ...before, description: 'why' }), { description: 'why' });
  eq('patchBody humantime period is the same', fields.patchBody(fields.formFromKey({ ...record, rate_limit: { requests: 5, period: '1day' } }, catalogue),
    { ...fields.formFromKey({ ...record, rate_limit: { requests: 5, period: '1day' } }, catalogue), ratePeriod: '24h' }), {});
  const values = { ipAllowlist: '10.0.0.1\n\nbad' };
  eq('errorTarget fields', ['name', 'description', 'scopes', 'scopes[2]', 'role', 'expires_at', 'rate_limit.requests', 'quota.refill_day', 'grace_period']
    .map((f) => fields.errorTarget(f, values)?.input),
  ['name', 'description', 'scopes', 'scopes', 'role', 'expires', 'rateLimit', 'quota', 'gracePeriod']);
  eq('errorTarget allowlist entry names its line', fields.errorTarget('ip_allowlist[1]', values), { input: 'ipAllowlist', prefix: 'Line 3: ' });
  eq('errorTarget allowlist', fields.errorTarget('ip_allowlist', values), { input: 'ipAllowlist', prefix: '' });
  eq('errorTarget banner', [fields.errorTarget(null), fields.errorTarget('metadata'), fields.errorTarget('limit')], [null, null, null]);

  // chart.js: a round top line, bars proportional, zeros flat.
  eq('niceMax', [0, 1, 7, 23, 99, 101, 4000].map(chart.niceMax), [1, 1, 10, 25, 100, 200, 5000]);
  const bars = chart.usageBars([{ date: 'd1', requests: 5 }, { date: 'd2', requests: 0 }, { date: 'd3', requests: 10 }], { width: 300, height: 100, gap: 0 });
  eq('usageBars totals', [bars.max, bars.total, bars.peak], [10, 15, 10]);
  eq('usageBars geometry', bars.bars.map((b) => [b.x, b.y, b.width, b.height]), [[0, 50, 100, 50], [100, 100, 100, 0], [200, 0, 100, 100]]);
  eq('usageBars empty', chart.usageBars([]).bars, []);

  done({ count, failures });
})().catch((e) => done({ count: 0, failures: [String((e && e.stack) || e)] }));
