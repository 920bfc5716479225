// DOM helpers. Everything from the API reaches the page through these as text nodes or
// properties, never as markup: there is no innerHTML anywhere in the dashboard.

const SVG_NS = 'http://www.w3.org/2000/svg';

/** Sets `props` on `el`: `class`, `text`, `on<event>` handlers, `dataset`, `attrs`, else properties. */
function assign(el, props) {
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.setAttribute('class', value);
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'attrs') for (const [a, v] of Object.entries(value)) el.setAttribute(a, v);
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key in el) el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: `h('button', {class: 'primary', onclick}, 'Create')`. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  assign(el, props);
  append(el, children);
  return el;
}

/** An SVG element; attributes only (geometry is attributes, so no style is needed). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [a, v] of Object.entries(attrs ?? {})) el.setAttribute(a, String(v));
  append(el, children);
  return el;
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let ids = 0;
/** A document-unique id, to tie a <label> or aria-describedby to its field. */
export function uid(hint) {
  ids += 1;
  return `${hint}-${ids}`;
}

/** A labelled field: `<div class="field"><label for>…</label>{control}<p hint/><p error/></div>`. */
export function field(label, control, { hint, optional } = {}) {
  if (!control.id) control.id = uid('f');
  const error = h('p', { class: 'field-error', id: uid('err'), hidden: true, attrs: { 'aria-live': 'polite' } });
  const described = [error.id];
  let hintEl = null;
  if (hint) {
    hintEl = h('p', { class: 'hint', id: uid('hint') }, hint);
    described.unshift(hintEl.id);
  }
  control.setAttribute('aria-describedby', described.join(' '));
  // `Optional` sits beside the label, not in it: the label reads exactly as the SPEC names it.
  const wrap = h('div', { class: 'field' },
    h('div', { class: 'label-row' },
      h('label', { htmlFor: control.id }, label),
      optional ? h('span', { class: 'optional' }, 'Optional') : null),
    control, hintEl, error);
  return { wrap, control, error };
}

/** Shows (or with an empty message clears) a field's error beside it. */
export function setFieldError(f, message) {
  f.error.textContent = message ?? '';
  f.error.hidden = !message;
  f.wrap.classList.toggle('invalid', Boolean(message));
  if (f.control.setAttribute) {
    if (message) f.control.setAttribute('aria-invalid', 'true');
    else f.control.removeAttribute('aria-invalid');
  }
}

/** A banner (role=alert) for an error that belongs to no field. */
export function banner(message, kind = 'error') {
  return h('div', { class: `banner banner-${kind}`, attrs: { role: kind === 'error' ? 'alert' : 'status' } }, message);
}

/** A status badge: `Active` (green), `Expired` (yellow), `Revoked` (red). */
export function badge(status, label) {
  return h('span', { class: `badge badge-${status}` }, label);
}
