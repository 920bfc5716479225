//! The Lua scripts of the Redis store, one per atomic step, each touching the keys of one hash
//! slot (see the layout in [`super`]), and [`SCRIPTS`], which hashes each once for `EVALSHA`.

use std::sync::LazyLock;

use redis::Script;

/// Adds a key to its workspace index, enforcing `max_active_keys` on the same slot: the
/// caller's, or with `stored` the stored workspace's (its `meta`, on this slot too, so that a
/// plan change or a workspace deletion is ordered with every create).
/// KEYS: keys, created, active, meta. ARGV: id, index entry, created ms, expiry score, now ms,
/// max active (-1: no limit), add to active (1/0), stored ('1': admit by `meta`).
pub(super) const CREATE_INDEX: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'conflict' end
local max = tonumber(ARGV[6])
if ARGV[8] == '1' then
  local plan = redis.call('HMGET', KEYS[4], 'api', 'max')
  if not plan[1] then return 'no_workspace' end
  if plan[1] ~= '1' then return 'no_api_access' end
  if ARGV[7] == '1' then max = tonumber(plan[2]) end
end
if max >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[5])
  if redis.call('ZCARD', KEYS[3]) >= max then return 'limit' end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[7] == '1' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
return 'ok'
";

/// Writes a new record hash unless one exists. KEYS: record. ARGV: JSON, usage count, last
/// used ms ('' for never).
pub(super) const CREATE_RECORD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'uc', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'lu', ARGV[3]) end
return 1
";

/// Claims an import's `sha256_tag` for a key. KEYS: tag. ARGV: `<id> <workspace>`, the claim
/// this caller found stale and takes over ('' for none). Returns `{'ok'}` (also when the key
/// holds it already) or `{'taken', holder}`.
pub(super) const CLAIM_TAG: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then return {'ok'} end
if v and v ~= ARGV[2] then return {'taken', v} end
redis.call('SET', KEYS[1], ARGV[1])
return {'ok'}
";

/// Releases a tag claim if it is still this key's. KEYS: tag. ARGV: `<id> <workspace>`.
pub(super) const RELEASE_TAG: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
";

/// Removes a record hash only if it still holds exactly what this create wrote.
/// KEYS: record. ARGV: JSON.
pub(super) const ROLLBACK_RECORD: &str = r"
if redis.call('HGET', KEYS[1], 'rec') == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
";

/// Lua: `version(rec)`, what a conditional `update` compares: the stored record's `updated_at`
/// in unix ms (rounded down, as `unix_ms`) and whether it is revoked; `nil` for a `rec` that is
/// not a record. `updated_at` is RFC 3339 as serde writes it (any offset, 0–9 fraction digits),
/// so records written before updates were conditional compare too. Doubles are exact here:
/// years 0–9999 are under 2^53 ms.
macro_rules! lua_version {
    () => {
        r"
local function unix_ms(text)
  if type(text) ~= 'string' then return nil end
  local y, mo, d, h, mi, s, frac, zone = string.match(text,
    '^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt](%d%d):(%d%d):(%d%d)(%.?%d*)(.*)$')
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  -- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local secs = (era * 146097 + doe - 719468) * 86400
    + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)
  if zone ~= 'Z' and zone ~= 'z' then
    local sign, oh, om = string.match(zone, '^([+-])(%d%d):(%d%d)$')
    if not sign then return nil end
    local offset = tonumber(oh) * 3600 + tonumber(om) * 60
    if sign == '+' then secs = secs - offset else secs = secs + offset end
  end
  local ms = 0
  if #frac > 1 then ms = tonumber(string.sub(frac .. '00', 2, 4)) end
  return secs * 1000 + ms
end
local function version(rec)
  local ok, record = pcall(cjson.decode, rec)
  if not ok or type(record) ~= 'table' then return nil end
  local at = unix_ms(record['updated_at'])
  if not at then return nil end
  local revoked = record['revoked_at'] ~= nil and record['revoked_at'] ~= cjson.null
  return at, revoked
end
"
    };
}

/// Replaces `rec` of an existing record hash if it is still the version the caller read, and
/// never with an unrevoked record over a revoked one: read, compare and write in one script.
/// KEYS: record. ARGV: JSON, expected `updated_at` ms, whether the JSON is revoked (1/0), the
/// keyed hex whose copy the caller has written this version to ('' for none), the JSON's
/// `updated_at` ms. Returns `ok`, `missing` (no record), `stale` (another version), `revoked`,
/// `corrupt`, or `moving:<keyed hex>` for a SHA-256 record an upgrade has marked (`to`): its
/// copy is written first (`CAS_COPY`), then this record follows it (ARGV[4] = `to`): only
/// forward, and never to unrevoked over revoked.
pub(super) const UPDATE_RECORD: &str = concat!(
    lua_version!(),
    r"
local rec = redis.call('HGET', KEYS[1], 'rec')
if not rec then return 'missing' end
local at, revoked = version(rec)
if not at then return 'corrupt' end
local to = redis.call('HGET', KEYS[1], 'to')
if to and to ~= ARGV[4] then return 'moving:' .. to end
if to then
  if at <= tonumber(ARGV[5]) and not (revoked and ARGV[3] ~= '1') then
    redis.call('HSET', KEYS[1], 'rec', ARGV[1])
  end
  return 'ok'
end
if rec == ARGV[1] then return 'ok' end
if at ~= tonumber(ARGV[2]) then return 'stale' end
if revoked and ARGV[3] ~= '1' then return 'revoked' end
redis.call('HSET', KEYS[1], 'rec', ARGV[1])
return 'ok'
"
);

/// Brings `created` and `active` in line with an updated record, unless the key was deleted
/// meanwhile. KEYS: keys, created, active. ARGV: id, created ms, expiry score, active (1/0).
pub(super) const SYNC_INDEX: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return 1
";

/// Reads and removes a record hash in one step. KEYS: record.
pub(super) const DELETE_RECORD: &str = r"
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return fields
";

/// Lua: `rev_start(zset, score, member)`, the rank in descending order (score, then member
/// bytewise) of the first element after the position `(score, member)`, whether or not that
/// element is still there; `score == ''` is the very start.
///
/// If the element is still there its rank is exact; if it was removed, the elements that sort
/// before the position are counted (members compared bytewise by hand: Lua's `<` follows the
/// server's locale).
macro_rules! lua_rev_start {
    () => {
        r"
local function after(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
local function rev_start(zset, score, member)
  if score == '' then return 0 end
  local found = redis.call('ZSCORE', zset, member)
  if found and tonumber(found) == tonumber(score) then
    return redis.call('ZREVRANK', zset, member) + 1
  end
  local start = redis.call('ZCOUNT', zset, '(' .. score, '+inf')
  for _, m in ipairs(redis.call('ZRANGE', zset, score, score, 'BYSCORE')) do
    if after(m, member) then start = start + 1 end
  end
  return start
end
"
    };
}

/// One page of a ZSET after a position, newest first, with each member's value in a HASH, as
/// flat `[id, score, value | nil]` triples: key listings (KEYS: created, keys → index entries)
/// and audit logs (KEYS: log, entries → JSON). ARGV: position score ('' for the start),
/// position id, count. The position is the last member the previous page returned.
pub(super) const ZSET_PAGE: &str = concat!(
    lua_rev_start!(),
    r"
local start = rev_start(KEYS[1], ARGV[1], ARGV[2])
local count = tonumber(ARGV[3])
local page = redis.call('ZRANGE', KEYS[1], start, start + count - 1, 'REV', 'WITHSCORES')
local out = {}
for i = 1, #page, 2 do
  out[#out + 1] = page[i]
  out[#out + 1] = page[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], page[i])
end
return out
"
);

/// Adds usage to a record hash that still exists; `lu` only moves forward. KEYS: record.
/// ARGV: count, last used ms. Sent with EVAL inside a pipeline, so it survives a script flush.
pub(super) const ADD_USAGE: &str = r"
if redis.call('HEXISTS', KEYS[1], 'rec') == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'uc', ARGV[1])
local lu = tonumber(redis.call('HGET', KEYS[1], 'lu') or '0')
if tonumber(ARGV[2]) > lu then redis.call('HSET', KEYS[1], 'lu', ARGV[2]) end
return 1
";

/// Adds per-day usage of a key that still exists. KEYS: keys, days. ARGV: id, oldest day kept
/// (`YYYY-MM-DD`), expiry seconds, then day and count pairs (days older than the oldest are
/// skipped). When a day is new to the hash (once a day per key), days older than the oldest
/// are removed. Days compare as numbers (`YYYYMMDD`): Lua's string `<` follows the server's
/// locale. Sent with EVAL inside a pipeline, so it survives a script flush.
pub(super) const ADD_DAYS: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local function day(d) return tonumber((string.gsub(d, '-', ''))) or 0 end
local oldest = day(ARGV[2])
local new_day = false
for i = 4, #ARGV, 2 do
  if day(ARGV[i]) >= oldest then
    local n = tonumber(ARGV[i + 1])
    if redis.call('HINCRBY', KEYS[2], ARGV[i], n) == n then new_day = true end
  end
end
if new_day then
  for _, d in ipairs(redis.call('HKEYS', KEYS[2])) do
    if day(d) < oldest then redis.call('HDEL', KEYS[2], d) end
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return 1
";

/// Prepends log entries of a key that still exists and trims the list.
/// KEYS: keys, logs. ARGV: id, max per key, entries oldest first.
pub(super) const APPEND_LOGS: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local keep = tonumber(ARGV[2])
if keep == 0 then redis.call('DEL', KEYS[2]) return 1 end
for i = 3, #ARGV do redis.call('LPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[2], 0, keep - 1)
return 1
";

/// Removes a key's index entries, request log and per-day usage, if its index entry is still the
/// one the caller removed the record of (a delete, or a failed create undone). KEYS: keys,
/// created, active, logs, days. ARGV: id, index entry.
pub(super) const DELETE_INDEX_IF: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4], KEYS[5])
return 1
";

/// Reads and removes a record hash if it holds the record of key ARGV[1]; `{}` otherwise
/// (callers that only remove ignore the reply). KEYS: record. ARGV: id.
pub(super) const TAKE_IF_KEY: &str = r"
local rec = redis.call('HGET', KEYS[1], 'rec')
if not rec or cjson.decode(rec)['id'] ~= ARGV[1] then return {} end
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return fields
";

/// Replaces `rec` of the copy an upgrade from `P{s:ARGV[2]}` wrote, with a record that `update`
/// has just written to the SHA-256 record. Two updates reach the copy in either order, so the
/// copy never goes back to an older version, nor from revoked to unrevoked. KEYS: record.
/// ARGV: JSON, SHA-256 hex, its `updated_at` ms, whether it is revoked (1/0).
pub(super) const UPDATE_COPY: &str = concat!(
    lua_version!(),
    r"
if redis.call('HGET', KEYS[1], 'from') ~= ARGV[2] then return 0 end
local at, revoked = version(redis.call('HGET', KEYS[1], 'rec') or '')
if at and at > tonumber(ARGV[3]) then return 0 end
if revoked and ARGV[4] ~= '1' then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1])
return 1
"
);

/// Step 2 of an upgrade, first half: marks the SHA-256 record `to` = the new hash and reads it,
/// in one step. From here `update` writes the copy under the new hash before this record
/// (`UPDATE_RECORD` answers `moving`), so this record cannot change before a copy exists, and
/// every copy written from a read taken after the mark is current. KEYS: SHA-256 record.
/// ARGV: id, new hex. Returns the record's fields, `{}` if it is not this key's.
pub(super) const MARK_UPGRADE: &str = r"
local rec = redis.call('HGET', KEYS[1], 'rec')
if not rec then return {} end
local ok, record = pcall(cjson.decode, rec)
if not ok or type(record) ~= 'table' or record['id'] ~= ARGV[1] then return {} end
redis.call('HSET', KEYS[1], 'to', ARGV[2])
return redis.call('HGETALL', KEYS[1])
";

/// Undoes `MARK_UPGRADE` when the new hash is another key's. KEYS: SHA-256 record. ARGV: hex.
pub(super) const UNMARK_UPGRADE: &str = r"
if redis.call('HGET', KEYS[1], 'to') == ARGV[1] then redis.call('HDEL', KEYS[1], 'to') end
return 1
";

/// Writes an edit to the copy of a marked upgrade, if the copy is still the version the caller
/// read (as `UPDATE_RECORD`): the copy is the key from the mark on. KEYS: copy. ARGV: JSON
/// (upgraded), SHA-256 hex, expected `updated_at` ms, whether the JSON is revoked (1/0), id.
/// Returns `ok`, `absent` (no copy yet), `stale`, `revoked`, `corrupt`, `moved` (the upgrade
/// finished: the copy is the record) or `foreign` (another key's record).
pub(super) const CAS_COPY: &str = concat!(
    lua_version!(),
    r"
local rec = redis.call('HGET', KEYS[1], 'rec')
if not rec then return 'absent' end
if redis.call('HGET', KEYS[1], 'from') ~= ARGV[2] then
  local ok, record = pcall(cjson.decode, rec)
  if ok and type(record) == 'table' and record['id'] == ARGV[5] then return 'moved' end
  return 'foreign'
end
local at, revoked = version(rec)
if not at then return 'corrupt' end
if at ~= tonumber(ARGV[3]) then return 'stale' end
if revoked and ARGV[4] ~= '1' then return 'revoked' end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'm', '1')
return 'ok'
"
);

/// Step 1 of an upgrade: marks the index entry `u:<old>:<new>`. KEYS: keys. ARGV: id, new hex.
/// Returns `{'moving', old}` (also when resuming an upgrade to the same hash), `{'done'}` (keyed
/// by the new hash already), `{'missing'}` or `{'conflict'}` (keyed by, or moving to, another).
pub(super) const BEGIN_UPGRADE: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return {'missing'} end
if v == ARGV[2] then return {'done'} end
local old = string.match(v, '^s:(%x+)$')
if old then
  redis.call('HSET', KEYS[1], ARGV[1], 'u:' .. old .. ':' .. ARGV[2])
  return {'moving', old}
end
local moving, target = string.match(v, '^u:(%x+):(%x+)$')
if moving and target == ARGV[2] then return {'moving', moving} end
return {'conflict'}
";

/// Step 2 of an upgrade, second half: writes the copy under the new hash from a read taken
/// after the mark, unless one is there already (`m`: written since the mark, by this or an
/// edit, and so current). A copy without `m` was written before marks existed, possibly from a
/// stale read: it is replaced. KEYS: record. ARGV: JSON, usage count, last used ms ('' for
/// never), SHA-256 hex. Returns `{'ok', rec}` with the `rec` now stored, or `{'taken'}` when
/// the hash holds a record that no upgrade from this digest is writing.
pub(super) const WRITE_COPY: &str = r"
local rec = redis.call('HGET', KEYS[1], 'rec')
if not rec then
  redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'uc', ARGV[2], 'mv', ARGV[2], 'from', ARGV[4],
    'm', '1')
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'lu', ARGV[3]) end
  return {'ok', ARGV[1]}
end
if redis.call('HGET', KEYS[1], 'from') ~= ARGV[4] then return {'taken'} end
if redis.call('HGET', KEYS[1], 'm') then return {'ok', rec} end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'm', '1')
return {'ok', ARGV[1]}
";

/// Replaces an index entry if it is still `ARGV[2]`; already `ARGV[3]` counts as done.
/// KEYS: keys. ARGV: id, expected, replacement.
pub(super) const SWAP_INDEX: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v == ARGV[3] then return 1 end
if v ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
";

/// Step 4 of an upgrade, once the SHA-256 record is taken: carries what it held last into the
/// new record. `rec` is replaced only if nothing wrote it since step 2; usage counted on the old
/// record after the copy is added. KEYS: record. ARGV: `rec` as of step 2, last `rec` of the
/// old record (converted; '' for none), its usage count, its last use ms (''), SHA-256 hex.
pub(super) const FINISH_UPGRADE: &str = r"
if redis.call('HGET', KEYS[1], 'from') ~= ARGV[5] then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'rec') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'rec', ARGV[2])
end
local moved = tonumber(redis.call('HGET', KEYS[1], 'mv') or '0')
local uc = tonumber(ARGV[3])
if uc > moved then redis.call('HINCRBY', KEYS[1], 'uc', uc - moved) end
if ARGV[4] ~= '' then
  local lu = tonumber(redis.call('HGET', KEYS[1], 'lu') or '0')
  if tonumber(ARGV[4]) > lu then redis.call('HSET', KEYS[1], 'lu', ARGV[4]) end
end
redis.call('HDEL', KEYS[1], 'mv', 'from', 'm')
return 1
";

/// Adds an entry to one audit log and trims it to the newest ARGV[4]. KEYS: log ZSET, entries
/// HASH. ARGV: id, time ms, JSON, max entries. Sent with EVAL inside a pipeline.
pub(super) const APPEND_AUDIT: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if excess > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, excess - 1)) do
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
end
return 1
";

/// Adds ARGV[1] units to a quota count if it stays at or below ARGV[2]; sets the expiry
/// ARGV[3] (unix s, '' for none) when it adds. KEYS: the count. Returns `{count, added (1/0)}`.
/// Sent with EVAL inside a pipeline when several counts are written at once.
pub(super) const CONSUME_QUOTA: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[1])
if used + n > tonumber(ARGV[2]) then return {used, 0} end
if n > 0 then
  used = redis.call('INCRBY', KEYS[1], ARGV[1])
  if ARGV[3] ~= '' then redis.call('EXPIREAT', KEYS[1], ARGV[3]) end
end
return {used, 1}
";

/// Writes a stored workspace conditionally. KEYS: meta. ARGV: record JSON, api access (1/0),
/// max active keys, updated ms, expected updated ms ('' for a create). Returns `ok` (also when
/// the record is there already, byte for byte) or `conflict`.
pub(super) const PUT_WORKSPACE: &str = r"
local cur = redis.call('HGET', KEYS[1], 'rec')
if cur == ARGV[1] then return 'ok' end
if ARGV[5] == '' then
  if cur then return 'conflict' end
elseif not cur or redis.call('HGET', KEYS[1], 'u') ~= ARGV[5] then
  return 'conflict'
end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'api', ARGV[2], 'max', ARGV[3], 'u', ARGV[4])
return 'ok'
";

/// Removes a stored workspace if its key index is empty. KEYS: meta, keys. Returns `{'none'}`,
/// `{'not_empty', n}` or `{'ok', record JSON}`.
pub(super) const DELETE_WORKSPACE: &str = r"
local cur = redis.call('HGET', KEYS[1], 'rec')
if not cur then return {'none'} end
local n = redis.call('HLEN', KEYS[2])
if n > 0 then return {'not_empty', tostring(n)} end
redis.call('DEL', KEYS[1])
return {'ok', cur}
";

/// The scripts, hashed once (`EVALSHA`; the client loads a script again after `NOSCRIPT`, e.g.
/// after a Redis restart).
pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(Scripts::new);

pub(super) struct Scripts {
    pub(super) create_index: Script,
    pub(super) create_record: Script,
    pub(super) rollback_record: Script,
    pub(super) claim_tag: Script,
    pub(super) release_tag: Script,
    pub(super) update_record: Script,
    pub(super) sync_index: Script,
    pub(super) delete_record: Script,
    pub(super) delete_index_if: Script,
    pub(super) take_if_key: Script,
    pub(super) update_copy: Script,
    pub(super) begin_upgrade: Script,
    pub(super) mark_upgrade: Script,
    pub(super) unmark_upgrade: Script,
    pub(super) cas_copy: Script,
    pub(super) write_copy: Script,
    pub(super) swap_index: Script,
    pub(super) finish_upgrade: Script,
    pub(super) page: Script,
    pub(super) consume_quota: Script,
    pub(super) put_workspace: Script,
    pub(super) delete_workspace: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            create_index: Script::new(CREATE_INDEX),
            create_record: Script::new(CREATE_RECORD),
            rollback_record: Script::new(ROLLBACK_RECORD),
            claim_tag: Script::new(CLAIM_TAG),
            release_tag: Script::new(RELEASE_TAG),
            update_record: Script::new(UPDATE_RECORD),
            sync_index: Script::new(SYNC_INDEX),
            delete_record: Script::new(DELETE_RECORD),
            delete_index_if: Script::new(DELETE_INDEX_IF),
            take_if_key: Script::new(TAKE_IF_KEY),
            update_copy: Script::new(UPDATE_COPY),
            begin_upgrade: Script::new(BEGIN_UPGRADE),
            mark_upgrade: Script::new(MARK_UPGRADE),
            unmark_upgrade: Script::new(UNMARK_UPGRADE),
            cas_copy: Script::new(CAS_COPY),
            write_copy: Script::new(WRITE_COPY),
            swap_index: Script::new(SWAP_INDEX),
            finish_upgrade: Script::new(FINISH_UPGRADE),
            page: Script::new(ZSET_PAGE),
            consume_quota: Script::new(CONSUME_QUOTA),
            put_workspace: Script::new(PUT_WORKSPACE),
            delete_workspace: Script::new(DELETE_WORKSPACE),
        }
    }
}
