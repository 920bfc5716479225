// `Sign in`: the `Admin token` field. The token is checked against the API before it is kept
// (in sessionStorage, by api.js); a wrong one shows the API's own message beside the field.

import { h, replace, field, setFieldError, banner } from './dom.js';
import { listWorkspaces, session } from './api.js';

/** Renders the sign-in screen; `onSignedIn(workspaces)` runs once a token is accepted. */
export function renderSignIn(root, { message, onSignedIn }) {
  const input = h('input', { type: 'password', name: 'token', autocomplete: 'off', spellcheck: false, required: true });
  const token = field('Admin token', input, {
    hint: 'An admin token from the gateway’s config, or an API key holding api.key.* scopes. It is kept for this browser tab only.',
  });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block' }, 'Sign in');

  async function signIn(e) {
    e.preventDefault();
    setFieldError(token, '');
    const value = input.value.trim();
    if (!value) {
      setFieldError(token, 'Enter an admin token or an API key.');
      input.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    try {
      const workspaces = await listWorkspaces(value);
      if (!workspaces.length) {
        setFieldError(token, 'This token may not manage keys in any workspace.');
        return;
      }
      session.signIn(value);
      input.value = '';
      onSignedIn(workspaces);
    } catch (err) {
      setFieldError(token, err.message);
      input.focus();
    } finally {
      submit.disabled = false;
      submit.textContent = 'Sign in';
    }
  }

  replace(root,
    h('main', { class: 'signin' },
      h('form', { class: 'signin-card', noValidate: true, onsubmit: signIn },
        h('div', { class: 'brand brand-large' }, h('span', { class: 'brand-mark', attrs: { 'aria-hidden': 'true' } }), 'keygate'),
        h('h1', null, 'Manage API keys'),
        h('p', { class: 'lede' }, 'Create, rotate and revoke the keys of your workspaces.'),
        message ? banner(message, 'info') : null,
        token.wrap,
        submit)));
  input.focus();
}
