// Lists that load page by page (the admin API's `next_cursor`), newest first, and change in
// place when a key is created, rotated, revoked or deleted. Pure functions on plain objects.

/** A list before its first page: nothing held, no cursor, not done. */
export function emptyList() {
  return { items: [], cursor: null, done: false };
}

/** Newest first as the API orders keys: `created_at` descending, then `id` descending. */
export function compareNewest(a, b) {
  const ta = Date.parse(a.created_at ?? a.time ?? '') || 0;
  const tb = Date.parse(b.created_at ?? b.time ?? '') || 0;
  if (ta !== tb) return tb - ta;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

/**
 * `list` with the items of the next `page` (`{items, next_cursor}`) appended, those for which
 * `keep` is false left out, and any already held (by id) replaced in place rather than repeated.
 */
export function mergePage(list, page, keep = () => true) {
  const items = list.items.slice();
  const at = new Map(items.map((item, i) => [item.id, i]));
  for (const item of page.items ?? []) {
    if (!keep(item)) continue;
    if (at.has(item.id)) items[at.get(item.id)] = item;
    else {
      at.set(item.id, items.length);
      items.push(item);
    }
  }
  const cursor = page.next_cursor ?? null;
  return { items, cursor, done: cursor === null };
}

/**
 * `list` with `item` in its newest-first place (replacing an older copy). An item that sorts
 * after everything held while more pages remain is left for the page that will bring it.
 */
export function insertItem(list, item) {
  const items = list.items.filter((x) => x.id !== item.id);
  const i = items.findIndex((x) => compareNewest(item, x) < 0);
  if (i === -1) {
    if (!list.done) return { ...list, items };
    items.push(item);
  } else {
    items.splice(i, 0, item);
  }
  return { ...list, items };
}

/** `list` without the item `id`. */
export function removeItem(list, id) {
  return { ...list, items: list.items.filter((x) => x.id !== id) };
}

/** Whether a key belongs in the `API keys` table (active or expired) rather than `Revoked keys`. */
export function isListed(key) {
  return key.status !== 'revoked';
}
