// The `Audit log` tab: who did what to which key, when (`Time`, `Actor`, `Action`, `Key`),
// newest first, `Load more`.

import { h, replace, banner } from './dom.js';
import { button } from './dialog.js';
import { formatDateTime, formatSeconds, describeAction } from './format.js';
import { emptyList, mergePage } from './pages.js';
import { auditLog } from './api.js';

/** What an entry's `detail` adds, in a few words: the fields an update changed, a refusal. */
function detailText(entry) {
  const d = entry.detail ?? {};
  if (Array.isArray(d.fields) && d.fields.length) return `Changed ${d.fields.join(', ')}`;
  if (entry.outcome && entry.outcome !== 'ok') return `Refused: ${entry.outcome}`;
  if (d.new_key_id) {
    const grace = Number(d.grace_period) > 0 ? `, grace period ${formatSeconds(d.grace_period)}` : '';
    return `New key ${d.new_key_id}${grace}`;
  }
  return '';
}

/** Renders the tab into `container` and loads its first page. */
export function renderAudit(container, ctx) {
  const ws = ctx.ws.name;
  let list = emptyList();
  let loading = false;
  let error = null;
  const slot = h('div', { class: 'list-slot' });
  replace(container,
    h('div', { class: 'page-header' }, h('div', null,
      h('h1', null, 'Audit log'),
      h('p', { class: 'lede' }, 'Every change to this workspace’s keys: who made it and when. Secrets never appear here.'))),
    slot);

  function row(e) {
    return h('tr', null,
      h('td', { dataset: { label: 'Time' } }, h('time', { dateTime: e.time }, formatDateTime(e.time, { seconds: true }))),
      h('td', { dataset: { label: 'Actor' } }, h('code', null, e.actor)),
      h('td', { dataset: { label: 'Action' } }, h('span', { class: 'action' }, describeAction(e.action)), ' ', h('code', { class: 'muted small' }, e.action)),
      h('td', { dataset: { label: 'Key' } }, e.key_id
        ? h('button', { type: 'button', class: 'link mono', onclick: () => ctx.show('details', e.key_id) }, e.key_id)
        : h('span', { class: 'muted' }, '—')),
      h('td', { dataset: { label: 'Details' } }, detailText(e)));
  }

  function render() {
    const more = list.done ? null : button(loading ? 'Loading…' : 'Load more', { onclick: load, disabled: loading });
    if (!list.items.length) {
      replace(slot, error ? banner(error) : null,
        loading ? h('p', { class: 'loading' }, 'Loading the audit log…')
          : list.done ? h('div', { class: 'empty' }, h('h2', null, 'No entries yet'), h('p', null, 'Creating, editing, rotating, revoking or deleting a key adds an entry here.'))
            : more);
      return;
    }
    replace(slot, error ? banner(error) : null,
      h('div', { class: 'table-wrap' }, h('table', { class: 'data-table audit-table' },
        h('caption', { class: 'sr-only' }, 'Audit log'),
        h('thead', null, h('tr', null, ['Time', 'Actor', 'Action', 'Key', 'Details'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', null, list.items.map(row)))),
      more ? h('div', { class: 'list-foot' }, more) : null);
  }

  async function load() {
    if (loading) return;
    loading = true;
    error = null;
    render();
    try {
      const page = await auditLog(ws, { cursor: list.cursor });
      list = mergePage(list, { items: page.entries, next_cursor: page.next_cursor });
    } catch (err) {
      error = err.message;
    }
    loading = false;
    render();
  }

  load();
}
