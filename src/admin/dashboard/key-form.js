// The `Create API key` and `Edit` dialogs: one form (Name, Description, Scopes, Role, Expiry
// date, IP allowlist, and the optional limits), API errors shown beside the field they name.

import { h, field, setFieldError, uid } from './dom.js';
import { openDialog, button } from './dialog.js';
import { scopeLabel, ALL_SCOPES_LABEL } from './format.js';
import {
  RATE_PERIODS, REFILLS, formFromKey, createBody, patchBody, errorTarget, localDay,
} from './fields.js';
import { createKey, updateKey } from './api.js';
import { showSecret } from './secret-dialog.js';

function select(options, value, props = {}) {
  const el = h('select', props, options.map(([label, v]) => h('option', { value: v }, label)));
  if (value !== undefined && ![...el.options].some((o) => o.value === value)) {
    el.append(h('option', { value }, value));
  }
  if (value !== undefined) el.value = value;
  return el;
}

/** A visually hidden label, for a control whose visible label is its group's. */
function srLabel(text, control) {
  if (!control.id) control.id = uid('f');
  return h('label', { class: 'sr-only', htmlFor: control.id }, text);
}

/** Puts `control` (already inside its field) on one line with `others`. */
function inline(control, ...others) {
  const row = h('div', { class: 'inline' });
  control.replaceWith(row);
  row.append(control, ...others);
}

/** The Scopes group: a checkbox per scope the config knows (`*` first), plus free entry. */
function scopesField(values, catalogue) {
  const known = (catalogue?.scopes ?? []).map((s) => s.name).filter((n) => n !== '*');
  const names = ['*', ...known];
  const checks = names.map((name) => {
    const box = h('input', { type: 'checkbox', value: name, id: uid('scope'), checked: values.scopes.includes(name) });
    const label = name === '*' ? ALL_SCOPES_LABEL : scopeLabel(name, catalogue);
    return h('label', { class: 'check', htmlFor: box.id },
      box, h('span', null, label, label !== name && name !== '*' ? h('code', { class: 'scope-name' }, name) : null));
  });
  const extra = h('input', { type: 'text', value: values.extraScopes, spellcheck: false, autocomplete: 'off' });
  const extraField = field(catalogue ? 'Other scopes' : 'Scope names', extra, {
    hint: 'Scope names separated by spaces or commas, e.g. reports:read.',
  });
  const error = h('p', { class: 'field-error', id: uid('err'), hidden: true });
  const group = h('fieldset', { class: 'field scopes', attrs: { 'aria-describedby': error.id } },
    h('legend', null, 'Scopes'),
    h('div', { class: 'check-grid' }, checks),
    extraField.wrap,
    error);
  return {
    wrap: group,
    control: checks[0]?.querySelector('input') ?? extra,
    error,
    read: () => ({
      scopes: [...group.querySelectorAll('input[type=checkbox]:checked')].map((b) => b.value),
      extraScopes: extra.value,
    }),
  };
}

/** The Role field, with a hint naming what the chosen role grants. */
function roleField(values, catalogue) {
  const roles = catalogue?.roles ?? [];
  const control = select([['None', ''], ...roles.map((r) => [r.name, r.name])], values.role);
  const f = field('Role', control, { hint: ' ' });
  const hintEl = f.wrap.querySelector('.hint');
  const describe = () => {
    const role = roles.find((r) => r.name === control.value);
    hintEl.textContent = role
      ? `Grants: ${role.scopes.map((s) => scopeLabel(s, catalogue)).join(', ') || 'no scopes'}`
      : 'A named set of scopes from the gateway config.';
  };
  control.addEventListener('change', describe);
  describe();
  return f;
}

/**
 * The key form for `values` (see fields.js `formFromKey`). Returns its element, `read()` (the
 * current values), `showApiError(err)` (true when the error went beside a field) and `clear()`.
 */
export function keyForm(values, catalogue) {
  const name = field('Name', h('input', { type: 'text', value: values.name, maxLength: 100, autocomplete: 'off', required: true }),
    { hint: 'What the key is for, e.g. "Production server" or "CI pipeline".' });
  const description = field('Description', h('textarea', { value: values.description, rows: 2, maxLength: 500 }), { optional: true });
  const scopes = scopesField(values, catalogue);
  const role = roleField(values, catalogue);
  const expires = field('Expiry date', h('input', { type: 'date', value: values.expires, min: localDay(new Date()) }), {
    optional: true, hint: 'The key stops working after this day. Leave blank for no expiry.',
  });
  const ipAllowlist = field('IP allowlist', h('textarea', { value: values.ipAllowlist, rows: 3, spellcheck: false, class: 'mono' }), {
    optional: true, hint: 'One address or CIDR per line, e.g. 203.0.113.7 or 10.0.0.0/8. Leave blank to allow any address.',
  });

  const rateRequests = h('input', { type: 'number', min: 1, step: 1, value: values.rateRequests, inputMode: 'numeric', placeholder: 'Default' });
  const ratePeriod = select(RATE_PERIODS.map(([l, v]) => [l, v]), values.ratePeriod);
  const rateLimit = field('Rate limit', rateRequests, { optional: true, hint: 'Requests allowed per period; blank uses the workspace default.' });
  inline(rateRequests, srLabel('Rate limit period', ratePeriod), ratePeriod);

  const quotaLimit = h('input', { type: 'number', min: 0, step: 1, value: values.quotaLimit, inputMode: 'numeric', placeholder: 'None' });
  const quotaRefill = select(REFILLS, values.quotaRefill);
  const quota = field('Quota', quotaLimit, { optional: true, hint: 'Requests allowed in total, or per day or month.' });
  inline(quotaLimit, srLabel('Quota refill', quotaRefill), quotaRefill);

  const limits = h('details', { class: 'more', open: Boolean(values.rateRequests || values.quotaLimit) },
    h('summary', null, 'Rate limit and quota'), rateLimit.wrap, quota.wrap);

  const fields = { name, description, scopes, role, expires, ipAllowlist, rateLimit, quota };
  const element = h('div', { class: 'key-form' },
    name.wrap, description.wrap, scopes.wrap, role.wrap, expires.wrap, ipAllowlist.wrap, limits);

  function read() {
    return {
      name: name.control.value,
      description: description.control.value,
      ...scopes.read(),
      role: role.control.value,
      expires: expires.control.value,
      ipAllowlist: ipAllowlist.control.value,
      rateRequests: rateRequests.value,
      ratePeriod: ratePeriod.value,
      quotaLimit: quotaLimit.value,
      quotaRefill: quotaRefill.value,
    };
  }

  return {
    element,
    read,
    clear() {
      for (const f of Object.values(fields)) setFieldError(f, '');
    },
    showApiError(err) {
      const target = errorTarget(err.field, read());
      const f = target && fields[target.input];
      if (!f) return false;
      if (f === rateLimit || f === quota) limits.open = true;
      setFieldError(f, `${target.prefix}${err.message}`);
      f.control.focus();
      return true;
    },
  };
}

async function submitInto(dlg, form, request) {
  form.clear();
  dlg.showError(null);
  dlg.busy(true);
  try {
    const result = await request();
    dlg.busy(false);
    dlg.close(result);
  } catch (err) {
    dlg.busy(false);
    if (!form.showApiError(err)) dlg.showError(err.message);
  }
}

/**
 * `Create API key`: the form, then `Copy your API key`. Resolves to the new key (without its
 * secret) or undefined when cancelled.
 */
export async function openCreateDialog(ctx) {
  const form = keyForm(formFromKey(null, ctx.catalogue), ctx.catalogue);
  const dlg = openDialog({
    title: 'Create API key',
    content: form.element,
    onSubmit: () => submitInto(dlg, form, () => createKey(ctx.ws.name, createBody(form.read()))),
    actions: [button('Cancel', { onclick: () => dlg.close() }), button('Create', { kind: 'primary', type: 'submit' })],
  });
  form.element.querySelector('input')?.focus();
  const created = await dlg.closed;
  if (!created) return undefined;
  await showSecret(created);
  return created;
}

/** `Edit`: the form filled with `key`; `Save changes` sends what changed. Resolves to the updated key. */
export async function openEditDialog(ctx, key) {
  const before = formFromKey(key, ctx.catalogue);
  const form = keyForm(before, ctx.catalogue);
  const dlg = openDialog({
    title: 'Edit API key',
    content: form.element,
    onSubmit: () => submitInto(dlg, form, async () => {
      const patch = patchBody(before, form.read());
      return Object.keys(patch).length ? updateKey(key.workspace, key.id, patch) : key;
    }),
    actions: [button('Cancel', { onclick: () => dlg.close() }), button('Save changes', { kind: 'primary', type: 'submit' })],
  });
  form.element.querySelector('input')?.focus();
  return dlg.closed;
}
