// The `API keys` screen: the plan and limit notices, `Create API key`, the key table (active
// and expired keys, newest first, `Load more`), and `Revoked keys` apart with their dates.

import { h, replace, badge, banner } from './dom.js';
import { button } from './dialog.js';
import {
  formatDate, formatDateTime, formatRelative, formatNumber, displayPrefix, scopeSummary, statusLabel,
} from './format.js';
import { emptyList, mergePage, insertItem, removeItem, isListed } from './pages.js';
import { listKeys } from './api.js';
import { openCreateDialog } from './key-form.js';
import { openRevokeDialog, openDeleteDialog } from './key-actions.js';

/** Pages fetched at most per `Load more` when they hold only revoked keys. */
const MAX_PAGES_PER_LOAD = 5;

/** Why `Create API key` is disabled in `ws`, as a notice; null when creating is allowed. */
export function planNotice(ws) {
  if (!ws.api_access) {
    return h('div', { class: 'notice notice-warning', attrs: { role: 'status' } },
      h('strong', { class: 'notice-title' }, 'Upgrade required'),
      h('p', null, 'API keys need a plan with API access. Ask the owner of this workspace to upgrade its plan; existing keys keep working.'));
  }
  if (ws.active_keys >= ws.max_active_keys) {
    return h('div', { class: 'notice notice-info', attrs: { role: 'status' } },
      h('strong', { class: 'notice-title' }, `You can have up to ${formatNumber(ws.max_active_keys)} active API keys.`),
      h('p', null, 'Revoke a key you no longer need to create a new one.'));
  }
  return null;
}

function cell(label, ...content) {
  return h('td', { dataset: { label } }, ...content);
}

function timeCell(label, iso, text) {
  return cell(label, iso ? h('time', { dateTime: iso, title: formatDateTime(iso) }, text) : text);
}

function scopesCell(key, ctx) {
  const parts = scopeSummary(key, ctx.catalogue);
  return cell('Scopes', parts.length
    ? h('ul', { class: 'chips' }, parts.map((p) => h('li', { class: p.startsWith('Role: ') ? 'chip chip-role' : 'chip' }, p)))
    : h('span', { class: 'muted' }, 'None'));
}

function nameCell(key, ctx) {
  return h('th', { scope: 'row', dataset: { label: 'Name' } },
    h('button', { type: 'button', class: 'link key-link', onclick: () => ctx.show('details', key.id) }, key.name),
    key.description ? h('span', { class: 'key-description' }, key.description) : null);
}

function table(list, caption, headings, rows) {
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'data-table keys-table', dataset: { list } },
      h('caption', { class: 'sr-only' }, caption),
      h('thead', null, h('tr', null, headings.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, rows)));
}

/** Renders the screen into `container` and loads its first pages. */
export function renderKeys(container, ctx) {
  // This screen's workspace, fixed: answers that arrive after a switch must not mix in.
  const ws = ctx.ws.name;
  let listed = emptyList();
  let revoked = emptyList();
  let loading = false;
  let loadError = null;

  const createButton = button('Create API key', { kind: 'primary', onclick: create });
  const notices = h('div', { class: 'notices' });
  const listSlot = h('div', { class: 'list-slot', attrs: { 'aria-busy': 'true' } });
  const revokedSlot = h('section', { class: 'revoked', attrs: { 'aria-labelledby': 'revoked-heading' } });

  replace(container,
    h('div', { class: 'page-header' },
      h('div', null,
        h('h1', null, 'API keys'),
        h('p', { class: 'lede' }, 'Keys let applications call the API on behalf of this workspace. A key’s secret is shown once, when it is created.')),
      createButton),
    notices,
    listSlot,
    revokedSlot);

  function renderPlan() {
    const notice = planNotice(ctx.ws);
    replace(notices, notice);
    createButton.disabled = Boolean(notice);
  }

  function keyRow(key) {
    return h('tr', { dataset: { keyId: key.id } },
      nameCell(key, ctx),
      cell('Key', h('code', null, displayPrefix(key.prefix))),
      cell('Key ID', h('code', { class: 'key-id' }, key.id)),
      scopesCell(key, ctx),
      timeCell('Created', key.created_at, formatDate(key.created_at)),
      timeCell('Last used', key.last_used_at, formatRelative(key.last_used_at)),
      cell('Usage', h('span', { class: 'num' }, formatNumber(key.usage_count))),
      timeCell('Expires', key.expires_at, formatDate(key.expires_at)),
      cell('Status', badge(key.status, statusLabel(key.status))),
      cell('Actions', button('Revoke', { kind: 'ghost-danger', onclick: () => revoke(key) })));
  }

  function revokedRow(key) {
    return h('tr', { dataset: { keyId: key.id } },
      nameCell(key, ctx),
      cell('Key', h('code', null, displayPrefix(key.prefix))),
      cell('Key ID', h('code', { class: 'key-id' }, key.id)),
      timeCell('Revoked', key.revoked_at, formatDate(key.revoked_at)),
      timeCell('Last used', key.last_used_at, formatRelative(key.last_used_at)),
      cell('Usage', h('span', { class: 'num' }, formatNumber(key.usage_count))),
      cell('Status', badge('revoked', statusLabel('revoked'))),
      cell('Actions', button('Delete', { kind: 'ghost-danger', onclick: () => remove(key) })));
  }

  function renderList() {
    listSlot.setAttribute('aria-busy', String(loading && !listed.items.length));
    const more = !listed.done
      ? button(loading ? 'Loading…' : 'Load more', { onclick: () => loadListed(), disabled: loading })
      : null;
    const error = loadError ? banner(loadError) : null;
    if (!listed.items.length) {
      if (loading) replace(listSlot, h('p', { class: 'loading' }, 'Loading keys…'));
      else if (listed.done && !loadError) {
        replace(listSlot, h('div', { class: 'empty' },
          h('h2', null, revoked.items.length ? 'No active API keys' : 'No API keys yet'),
          h('p', null, ctx.ws.api_access
            ? 'Create a key to let an application call the API. You can limit what it may do with scopes, an expiry date and an IP allowlist.'
            : 'This workspace’s plan does not include API access.')));
      } else replace(listSlot, error, more);
      return;
    }
    replace(listSlot,
      error,
      table('keys', 'API keys', ['Name', 'Key', 'Key ID', 'Scopes', 'Created', 'Last used', 'Usage', 'Expires', 'Status', h('span', { class: 'sr-only' }, 'Actions')],
        listed.items.map(keyRow)),
      h('div', { class: 'list-foot' },
        h('span', { class: 'muted', attrs: { role: 'status' } }, `${formatNumber(listed.items.length)} shown`), more));
  }

  function renderRevoked() {
    if (!listed.items.length && listed.done) renderList();
    if (!revoked.items.length) {
      replace(revokedSlot);
      revokedSlot.hidden = true;
      return;
    }
    revokedSlot.hidden = false;
    replace(revokedSlot,
      h('h2', { id: 'revoked-heading' }, 'Revoked keys'),
      h('p', { class: 'lede' }, 'Revoked keys no longer work. They stay listed for reference until deleted.'),
      table('revoked', 'Revoked keys', ['Name', 'Key', 'Key ID', 'Revoked', 'Last used', 'Usage', 'Status', h('span', { class: 'sr-only' }, 'Actions')],
        revoked.items.map(revokedRow)),
      !revoked.done ? h('div', { class: 'list-foot' }, button('Load more', { onclick: () => loadRevoked() })) : null);
  }

  // The table pages through every key and shows the ones not revoked; should a page hold only
  // revoked keys, the next one is fetched at once (up to a few), so `Load more` always adds rows.
  async function loadListed() {
    if (loading) return;
    loading = true;
    loadError = null;
    renderList();
    try {
      for (let i = 0; i < MAX_PAGES_PER_LOAD; i += 1) {
        const before = listed.items.length;
        const page = await listKeys(ws, { cursor: listed.cursor });
        listed = mergePage(listed, { items: page.keys, next_cursor: page.next_cursor }, isListed);
        if (listed.done || listed.items.length > before) break;
      }
    } catch (err) {
      loadError = err.message;
    }
    loading = false;
    renderList();
  }

  async function loadRevoked() {
    try {
      const page = await listKeys(ws, { status: 'revoked', cursor: revoked.cursor });
      revoked = mergePage(revoked, { items: page.keys, next_cursor: page.next_cursor });
    } catch (err) {
      ctx.notify(err.message);
    }
    renderRevoked();
  }

  async function create() {
    const created = await openCreateDialog(ctx);
    if (!created) return;
    // The newest key of all: first in the table, even before the first page has come.
    listed = { ...insertItem({ ...listed, done: true }, created), done: listed.done };
    renderList();
    await ctx.refreshWorkspace();
    renderPlan();
  }

  async function revoke(key) {
    const result = await openRevokeDialog(key);
    if (!result) return;
    listed = removeItem(listed, key.id);
    revoked = insertItem(revoked, result);
    renderList();
    renderRevoked();
    await ctx.refreshWorkspace();
    renderPlan();
  }

  async function remove(key) {
    if (!(await openDeleteDialog(key))) return;
    revoked = removeItem(revoked, key.id);
    listed = removeItem(listed, key.id);
    renderList();
    renderRevoked();
    await ctx.refreshWorkspace();
    renderPlan();
  }

  renderPlan();
  renderRevoked();
  // The plan and the count of active keys as they are now, not as at sign-in.
  ctx.refreshWorkspace().then(() => {
    if (createButton.isConnected) renderPlan();
  });
  // The table first: the revoked keys are fetched once it shows (a filtered listing may scan).
  loadListed().then(() => loadRevoked());
}
