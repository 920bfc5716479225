// A key's details: its fields, the `Usage, last 30 days` chart, the `Request logs` table, and
// the buttons `Edit`, `Rotate`, `Revoke` and `Delete`.

import { h, s, replace, badge, banner } from './dom.js';
import { button } from './dialog.js';
import {
  formatDateTime, formatRelative, formatNumber, formatCount, formatDay, formatLatency, displayPrefix,
  scopeLabel, statusLabel, describeRateLimit, describeQuota, describeLogCode,
} from './format.js';
import { usageBars } from './chart.js';
import { getKey, keyUsage, keyLogs } from './api.js';
import { openEditDialog } from './key-form.js';
import { openRotateDialog, openRevokeDialog, openDeleteDialog } from './key-actions.js';

const CHART = { width: 600, height: 160, gap: 3 };

function fact(term, ...value) {
  return h('div', { class: 'fact' }, h('dt', null, term), h('dd', null, ...value));
}

function time(iso, text) {
  return iso ? h('time', { dateTime: iso, title: formatDateTime(iso) }, text) : text;
}

function keyLink(ctx, id) {
  return h('button', { type: 'button', class: 'link mono', onclick: () => ctx.show('details', id) }, id);
}

function facts(key, ctx) {
  const scopes = key.scopes?.length
    ? h('ul', { class: 'chips' }, key.scopes.map((sc) => h('li', { class: 'chip', title: sc }, scopeLabel(sc, ctx.catalogue))))
    : h('span', { class: 'muted' }, 'None');
  const role = ctx.catalogue?.roles?.find((r) => r.name === key.role);
  return h('dl', { class: 'facts facts-grid' },
    fact('Key ID', h('code', null, key.id)),
    fact('Key', h('code', null, displayPrefix(key.prefix))),
    fact('Status', badge(key.status, statusLabel(key.status))),
    fact('Description', key.description || h('span', { class: 'muted' }, 'None')),
    fact('Scopes', scopes),
    fact('Role', key.role
      ? [key.role, role ? h('span', { class: 'muted' }, ` (${role.scopes.map((sc) => scopeLabel(sc, ctx.catalogue)).join(', ')})`) : null]
      : h('span', { class: 'muted' }, 'None')),
    fact('IP allowlist', key.ip_allowlist?.length
      ? h('ul', { class: 'plain mono' }, key.ip_allowlist.map((ip) => h('li', null, ip)))
      : h('span', { class: 'muted' }, 'Any address')),
    fact('Expires', time(key.expires_at, formatDateTime(key.expires_at))),
    fact('Rate limit', describeRateLimit(key.rate_limit)),
    fact('Quota', describeQuota(key.quota)),
    key.owner ? fact('Owner', key.owner) : null,
    fact('Created', time(key.created_at, formatDateTime(key.created_at)), h('span', { class: 'muted' }, ` by ${key.created_by}`)),
    fact('Updated', time(key.updated_at, formatDateTime(key.updated_at))),
    fact('Last used', time(key.last_used_at, formatRelative(key.last_used_at))),
    fact('Usage', formatCount(key.usage_count, 'request')),
    key.revoked_at ? fact('Revoked', time(key.revoked_at, formatDateTime(key.revoked_at))) : null,
    key.rotated_from ? fact('Rotated from', keyLink(ctx, key.rotated_from)) : null,
    key.replaced_by ? fact('Replaced by', keyLink(ctx, key.replaced_by)) : null,
    key.metadata && Object.keys(key.metadata).length
      ? fact('Metadata', h('pre', { class: 'mono metadata' }, JSON.stringify(key.metadata, null, 2)))
      : null);
}

/** The bar chart: one SVG rectangle per UTC day, axis labels in HTML around it. */
function usageChart(days) {
  const { max, total, peak, bars } = usageBars(days, CHART);
  const svg = s('svg', {
    class: 'chart-svg', viewBox: `0 0 ${CHART.width} ${CHART.height}`, preserveAspectRatio: 'none',
    role: 'img', 'aria-label': `${formatCount(total, 'request')} in the last ${bars.length} days`,
  },
  [0, 0.5, 1].map((f) => s('line', {
    class: 'chart-grid', x1: 0, x2: CHART.width, y1: CHART.height * f, y2: CHART.height * f, 'vector-effect': 'non-scaling-stroke',
  })),
  bars.map((b) => s('rect', {
    class: b.requests ? 'chart-bar' : 'chart-bar chart-bar-zero', x: b.x, y: b.requests ? b.y : CHART.height - 1,
    width: b.width, height: b.requests ? Math.max(b.height, 1) : 1, 'data-date': b.date, 'data-requests': b.requests,
  }, s('title', null, `${formatDay(b.date, { withYear: true })}: ${formatCount(b.requests, 'request')}`))));
  const first = bars[0]?.date;
  const last = bars[bars.length - 1]?.date;
  return h('figure', { class: 'chart' },
    h('div', { class: 'chart-body' },
      h('div', { class: 'chart-y', attrs: { 'aria-hidden': 'true' } },
        h('span', null, formatNumber(max)), h('span', null, '0')),
      h('div', { class: 'chart-plot' }, svg,
        h('div', { class: 'chart-x', attrs: { 'aria-hidden': 'true' } },
          h('span', null, first ? formatDay(first) : ''), h('span', null, last ? `${formatDay(last)} (UTC)` : '')))),
    h('figcaption', { class: 'muted' }, total
      ? `${formatCount(total, 'request')} in total, at most ${formatNumber(peak)} on one day. Days are UTC.`
      : `No requests in the last ${bars.length} days.`));
}

function logsTable(entries) {
  if (!entries.length) return h('p', { class: 'empty-inline' }, 'No requests yet.');
  const row = (e) => h('tr', null,
    h('td', { dataset: { label: 'Time' } }, time(e.time, formatDateTime(e.time, { seconds: true }))),
    h('td', { dataset: { label: 'Method' } }, h('code', null, e.method)),
    h('td', { dataset: { label: 'Path' }, class: 'path' }, h('code', null, e.path)),
    h('td', { dataset: { label: 'Status' } }, h('span', { class: `http-status http-${String(e.status)[0]}xx` }, String(e.status))),
    h('td', { dataset: { label: 'Client IP' } }, h('code', null, e.client_ip)),
    h('td', { dataset: { label: 'Latency' }, class: 'num' }, formatLatency(e.latency_ms)),
    h('td', { dataset: { label: 'Code' } }, h('span', { class: e.code === 'forwarded' ? 'code-ok' : 'code-refused' }, describeLogCode(e.code))));
  return h('div', { class: 'table-wrap' }, h('table', { class: 'data-table logs-table' },
    h('caption', { class: 'sr-only' }, 'Request logs'),
    h('thead', null, h('tr', null, ['Time', 'Method', 'Path', 'Status', 'Client IP', 'Latency', 'Code'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', null, entries.map(row))));
}

function section(title, body) {
  return h('section', { class: 'panel' }, h('h2', null, title), body);
}

/** Renders the details of key `id` into `container`. */
export async function renderDetails(container, ctx, id) {
  const back = h('button', { type: 'button', class: 'link back', onclick: () => ctx.show('keys') }, '← API keys');
  // Its own element: should another screen replace this one before the answers come, they
  // land in a detached view.
  const view = h('div', { class: 'details' }, back, h('p', { class: 'loading' }, 'Loading key…'));
  replace(container, view);
  const ws = ctx.ws.name;
  const [key, usage, logs] = await Promise.allSettled([getKey(ws, id), keyUsage(ws, id, 30), keyLogs(ws, id, 100)]);
  if (!view.isConnected) return;
  if (key.status === 'rejected') {
    const err = key.reason;
    replace(view, back, banner(err.status === 404 ? 'This key no longer exists.' : err.message));
    return;
  }
  const k = key.value;
  const rerender = () => renderDetails(container, ctx, id);

  const revoked = k.status === 'revoked';
  const actions = h('div', { class: 'actions' },
    button('Edit', { disabled: revoked, onclick: async () => { if (await openEditDialog(ctx, k)) rerender(); } }),
    button('Rotate', {
      disabled: k.status !== 'active' || !ctx.ws.api_access,
      onclick: async () => {
        const rotated = await openRotateDialog(k);
        if (rotated) {
          await ctx.refreshWorkspace();
          ctx.show('details', rotated.key.id);
        }
      },
    }),
    revoked ? null : button('Revoke', {
      kind: 'danger',
      onclick: async () => {
        if (await openRevokeDialog(k)) {
          await ctx.refreshWorkspace();
          rerender();
        }
      },
    }),
    button('Delete', {
      kind: 'danger-outline',
      onclick: async () => {
        if (await openDeleteDialog(k)) {
          await ctx.refreshWorkspace();
          ctx.show('keys');
        }
      },
    }));

  replace(view,
    back,
    h('div', { class: 'page-header' },
      h('div', null,
        h('h1', { class: 'key-title', tabIndex: -1 }, h('span', null, k.name), badge(k.status, statusLabel(k.status))),
        k.description ? h('p', { class: 'lede' }, k.description) : null),
      actions),
    h('section', { class: 'panel' }, facts(k, ctx)),
    section('Usage, last 30 days', usage.status === 'fulfilled' ? usageChart(usage.value.days ?? []) : banner(usage.reason.message)),
    section('Request logs', logs.status === 'fulfilled' ? logsTable(logs.value.entries ?? []) : banner(logs.reason.message)));
  view.querySelector('h1')?.focus();
}
