// `Copy your API key`: the one time a secret is shown (after create and rotate). The secret
// lives only in the read-only field's value, never in an attribute or a variable kept after
// the dialog; `I have copied it` empties the field and takes the dialog out of the DOM.

import { h, field } from './dom.js';
import { openDialog, button } from './dialog.js';

/**
 * Shows `created.secret` (and `created.id`), removing `secret` from `created` first so the
 * caller's record no longer holds it. Resolves once the user has closed the dialog.
 */
export async function showSecret(created) {
  const input = h('input', {
    type: 'text', readOnly: true, class: 'secret-field mono', spellcheck: false, autocomplete: 'off',
    onfocus: (e) => e.target.select(),
  });
  input.value = created.secret;
  delete created.secret;

  const secretField = field('API key', input);
  const status = h('p', { class: 'copy-status', attrs: { role: 'status', 'aria-live': 'polite' } });
  const copy = button('Copy', {
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(input.value);
        status.textContent = 'Copied to the clipboard.';
      } catch {
        input.focus();
        input.select();
        status.textContent = 'Copying is blocked here: press Ctrl+C (⌘C on a Mac) to copy the selected key.';
      }
    },
  });
  const done = button('I have copied it', { kind: 'primary', onclick: () => {
    input.value = '';
    dlg.close(true);
  } });

  const dlg = openDialog({
    title: 'Copy your API key',
    className: 'dialog-secret',
    dismissable: false,
    content: [
      h('p', { class: 'notice notice-warning' }, 'You will not be able to see this key again.'),
      h('div', { class: 'secret-row' }, secretField.wrap, copy),
      status,
      h('dl', { class: 'facts' }, h('div', null, h('dt', null, 'Key ID'), h('dd', { class: 'mono' }, created.id))),
      h('p', { class: 'hint' }, 'Store it in a password manager or your secrets store. Send it in the ',
        h('code', null, 'Authorization: Bearer'), ' header.'),
    ],
    actions: [done],
  });
  input.focus();
  await dlg.closed;
}
