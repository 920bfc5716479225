// The dialogs of a key's actions besides create and edit: `Rotate` (grace period, then the
// new secret), `Revoke` and `Delete` (each behind its confirmation sentence).

import { h, setFieldError, uid } from './dom.js';
import { openDialog, button } from './dialog.js';
import { GRACE_PERIODS, errorTarget } from './fields.js';
import { rotateKey, revokeKey, deleteKey } from './api.js';
import { showSecret } from './secret-dialog.js';

/** The key's name, quoted, as text. */
const quoted = (key) => h('strong', { class: 'key-name' }, key.name);

async function confirmInto(dlg, request) {
  dlg.showError(null);
  dlg.busy(true);
  try {
    const result = await request();
    dlg.busy(false);
    dlg.close({ result });
  } catch (err) {
    dlg.busy(false);
    dlg.showError(err.message);
  }
}

/**
 * `Rotate`: choose a `Grace period`, `Rotate key`, then `Copy your API key` for the new key.
 * Resolves to `{key, previous}` (the new key without its secret) or undefined when cancelled.
 */
export async function openRotateDialog(key) {
  const name = uid('grace');
  const radios = GRACE_PERIODS.map(([label, value], i) => {
    const input = h('input', { type: 'radio', name, value, id: uid('grace'), checked: i === 0 });
    return h('label', { class: 'check', htmlFor: input.id }, input, h('span', null, label));
  });
  const error = h('p', { class: 'field-error', hidden: true });
  const group = h('fieldset', { class: 'field' }, h('legend', null, 'Grace period'), h('div', { class: 'radio-row' }, radios),
    h('p', { class: 'hint' }, 'How long the current key keeps working, so applications can switch to the new one.'),
    error);
  const graceField = { wrap: group, control: radios[0].querySelector('input'), error };
  const dlg = openDialog({
    title: 'Rotate API key',
    content: [
      h('p', null, 'A new key with the same settings replaces ', quoted(key), '. You will copy its secret next.'),
      group,
    ],
    onSubmit: async () => {
      setFieldError(graceField, '');
      dlg.showError(null);
      dlg.busy(true);
      try {
        const grace = group.querySelector('input:checked')?.value ?? '0s';
        const rotated = await rotateKey(key.workspace, key.id, grace);
        dlg.busy(false);
        dlg.close(rotated);
      } catch (err) {
        dlg.busy(false);
        if (errorTarget(err.field)?.input === 'gracePeriod') setFieldError(graceField, err.message);
        else dlg.showError(err.message);
      }
    },
    actions: [button('Cancel', { onclick: () => dlg.close() }), button('Rotate key', { kind: 'primary', type: 'submit' })],
  });
  graceField.control.focus();
  const rotated = await dlg.closed;
  if (!rotated) return undefined;
  await showSecret(rotated.key);
  return rotated;
}

/** `Revoke`: the warning, `Cancel` or `Revoke key`. Resolves to the revoked key, or undefined. */
export async function openRevokeDialog(key) {
  const cancel = button('Cancel', { onclick: () => dlg.close() });
  const dlg = openDialog({
    title: 'Revoke API key',
    className: 'dialog-danger',
    content: [
      h('p', null, 'Revoke ', quoted(key), '?'),
      h('p', null, 'Applications using this key will stop working.'),
      h('p', { class: 'strong' }, 'This cannot be undone.'),
    ],
    actions: [cancel, button('Revoke key', { kind: 'danger', onclick: () => confirmInto(dlg, () => revokeKey(key.workspace, key.id)) })],
  });
  cancel.focus();
  return (await dlg.closed)?.result;
}

/** `Delete`: the warning, `Cancel` or `Delete key`. Resolves to true once deleted. */
export async function openDeleteDialog(key) {
  const cancel = button('Cancel', { onclick: () => dlg.close() });
  const dlg = openDialog({
    title: 'Delete API key',
    className: 'dialog-danger',
    content: [
      h('p', null, 'Delete ', quoted(key), '?'),
      h('p', null, 'This permanently deletes the key and its request logs.'),
    ],
    actions: [cancel, button('Delete key', { kind: 'danger', onclick: () => confirmInto(dlg, async () => { await deleteKey(key.workspace, key.id); return true; }) })],
  });
  cancel.focus();
  return Boolean((await dlg.closed)?.result);
}
