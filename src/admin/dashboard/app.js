// The dashboard's entry point: sign-in or the signed-in shell (top bar with the `Workspace`
// selector and `Sign out`, the `API keys` and `Audit log` tabs), and which screen shows.
//
// Screens get a `ctx`: the workspace (`ws`, as `GET /v1/workspaces` describes it), the scope
// catalogue (`GET /v1/scopes`, or null), `show(screen, arg)`, `refreshWorkspace()` and `notify()`.

import { h, replace, banner } from './dom.js';
import { session, listWorkspaces, getWorkspace, scopeCatalogue, onUnauthorized } from './api.js';
import { renderSignIn } from './signin.js';
import { renderKeys } from './key-table.js';
import { renderDetails } from './key-details.js';
import { renderAudit } from './audit-log.js';

const root = document.getElementById('app');

function signOut(message) {
  session.signOut();
  for (const d of document.querySelectorAll('dialog')) d.remove();
  renderSignIn(root, { message, onSignedIn: enter });
}

onUnauthorized(() => signOut('Your session has ended: the token is no longer accepted. Sign in again.'));

async function enter(known) {
  replace(root, h('p', { class: 'loading page-loading' }, 'Loading…'));
  let workspaces;
  let catalogue;
  try {
    [workspaces, catalogue] = await Promise.all([known ?? listWorkspaces(), scopeCatalogue()]);
  } catch (err) {
    if (err.status === 401) return;
    replace(root, h('main', { class: 'page' }, banner(err.message),
      h('button', { type: 'button', class: 'btn btn-secondary', onclick: () => enter(known) }, 'Retry')));
    return;
  }
  if (!workspaces.length) {
    signOut('This token may not manage keys in any workspace.');
    return;
  }
  shell(workspaces, catalogue);
}

function shell(workspaces, catalogue) {
  const chosen = workspaces.find((w) => w.name === session.workspace()) ?? workspaces[0];
  const ctx = { ws: chosen, catalogue, show, refreshWorkspace, notify };
  let screen = 'keys';

  const main = h('main', { class: 'page', id: 'main', tabIndex: -1 });
  const notices = h('div', { class: 'page-notices', attrs: { 'aria-live': 'polite' } });

  let workspaceControl;
  if (workspaces.length > 1) {
    const selectEl = h('select', { id: 'workspace', onchange: (e) => {
      ctx.ws = workspaces.find((w) => w.name === e.target.value) ?? ctx.ws;
      session.setWorkspace(ctx.ws.name);
      show('keys');
    } }, workspaces.map((w) => h('option', { value: w.name }, w.name)));
    selectEl.value = chosen.name;
    workspaceControl = h('div', { class: 'workspace' }, h('label', { htmlFor: 'workspace' }, 'Workspace'), selectEl);
  } else {
    workspaceControl = h('div', { class: 'workspace' }, h('span', { class: 'workspace-label' }, 'Workspace'),
      h('span', { class: 'workspace-name' }, chosen.name));
  }

  const tabs = [['keys', 'API keys'], ['audit', 'Audit log']].map(([id, label]) => h('button', {
    type: 'button', class: 'tab', id: `tab-${id}`, attrs: { role: 'tab', 'aria-controls': 'main' },
    onclick: () => show(id),
    onkeydown: (e) => {
      if (e.key !== 'ArrowRight' && e.key !== 'ArrowLeft') return;
      const next = id === 'keys' ? 'audit' : 'keys';
      show(next);
      document.getElementById(`tab-${next}`)?.focus();
    },
  }, label));

  replace(root,
    h('a', { class: 'skip-link', href: '#main' }, 'Skip to content'),
    h('header', { class: 'topbar' },
      h('div', { class: 'topbar-inner' },
        h('div', { class: 'brand' }, h('span', { class: 'brand-mark', attrs: { 'aria-hidden': 'true' } }), 'keygate'),
        workspaceControl,
        h('button', { type: 'button', class: 'btn btn-ghost sign-out', onclick: () => signOut() }, 'Sign out'))),
    h('nav', { class: 'tabs', attrs: { role: 'tablist', 'aria-label': 'Sections' } }, h('div', { class: 'tabs-inner' }, tabs)),
    h('div', { class: 'page-wrap' }, notices, main));

  function show(next, arg) {
    screen = next;
    replace(notices);
    for (const t of tabs) {
      const selected = t.id === `tab-${next === 'audit' ? 'audit' : 'keys'}`;
      t.setAttribute('aria-selected', String(selected));
      t.tabIndex = selected ? 0 : -1;
    }
    if (next === 'details') renderDetails(main, ctx, arg);
    else if (next === 'audit') renderAudit(main, ctx);
    else renderKeys(main, ctx);
    window.scrollTo(0, 0);
  }

  async function refreshWorkspace() {
    const name = ctx.ws.name;
    try {
      const fresh = await getWorkspace(name);
      // Another workspace may have been chosen meanwhile: this answer is then not its.
      if (ctx.ws.name === name) ctx.ws = fresh;
      workspaces[workspaces.findIndex((w) => w.name === name)] = fresh;
    } catch (err) {
      if (err.status !== 401) notify(err.message);
    }
  }

  function notify(message) {
    replace(notices, banner(message));
  }

  show(screen);
}

if (session.token()) enter();
else renderSignIn(root, { onSignedIn: enter });
