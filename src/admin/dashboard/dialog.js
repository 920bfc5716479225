// Modal dialogs on the native <dialog>: showModal() makes the rest of the page inert and keeps
// focus inside, Escape cancels (unless the dialog says otherwise), and focus goes back to the
// button that opened it. A dialog leaves the DOM when it closes.

import { h, uid, replace, banner } from './dom.js';

/**
 * Opens a dialog titled `title` around `content`, with `actions` (buttons) at its foot; as a
 * form when `onSubmit` is given (Enter submits). `dismissable: false` ignores Escape: the
 * dialog closes only through `close()`. Returns `{dialog, close, closed, busy, showError}`.
 */
export function openDialog({ title, content, actions, onSubmit, dismissable = true, className = '' }) {
  const opener = document.activeElement;
  const titleId = uid('dialog-title');
  const errors = h('div', { class: 'dialog-errors' });
  const inner = [
    h('header', { class: 'dialog-header' }, h('h2', { id: titleId }, title)),
    h('div', { class: 'dialog-content' }, errors, content),
    actions ? h('footer', { class: 'dialog-actions' }, actions) : null,
  ];
  const body = onSubmit
    ? h('form', { class: 'dialog-form', noValidate: true, onsubmit: (e) => { e.preventDefault(); if (!busyNow) onSubmit(e); } }, inner)
    : h('div', { class: 'dialog-form' }, inner);
  const dialog = h('dialog', { class: `dialog ${className}`, attrs: { 'aria-labelledby': titleId } }, body);

  let done = false;
  let busyNow = false;
  let resolve;
  const closed = new Promise((r) => { resolve = r; });

  function close(result) {
    if (done) return;
    done = true;
    dialog.close();
    dialog.remove();
    if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
    resolve(result);
  }

  // Escape: the browser asks first (cancel); a dialog that may not be dismissed, or one whose
  // request is in flight (a create whose secret is on its way), says no.
  dialog.addEventListener('cancel', (e) => {
    e.preventDefault();
    if (dismissable && !busyNow) close(undefined);
  });
  // Chromium closes a dialog anyway on a second Escape without user activation in between;
  // one that may not be dismissed opens again at once.
  dialog.addEventListener('close', () => {
    if (done) return;
    if (dismissable && !busyNow) close(undefined);
    else dialog.showModal();
  });

  document.body.append(dialog);
  dialog.showModal();

  return {
    dialog,
    close,
    closed,
    /** Marks a request in flight: the action buttons are disabled and Escape waits. */
    busy(on) {
      busyNow = on;
      dialog.classList.toggle('is-busy', on);
      for (const b of dialog.querySelectorAll('.dialog-actions button')) {
        if (on && !b.disabled) {
          b.disabled = true;
          b.dataset.busy = '';
        } else if (!on && 'busy' in b.dataset) {
          b.disabled = false;
          delete b.dataset.busy;
        }
      }
    },
    /** Shows an error that belongs to no field at the top of the dialog (or clears it). */
    showError(message) {
      if (message) replace(errors, banner(message));
      else replace(errors);
    },
  };
}

/** A button; `kind` is `primary`, `danger` or `secondary`. */
export function button(label, { kind = 'secondary', type = 'button', onclick, disabled } = {}) {
  return h('button', { type, class: `btn btn-${kind}`, onclick, disabled }, label);
}
