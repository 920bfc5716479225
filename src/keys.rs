//! Key material and key records: secret format, ids, checksums, keyed hashing, and the record the
//! store keeps. Nothing here touches the network or the store.
//!
//! A keygate secret reads `<prefix>_<env>_<body>`: the body is 32 bytes from the OS CSPRNG in
//! fixed-width base62 (43 characters) followed by a 6-character base62 CRC32 of everything before
//! it. The checksum lets the gateway refuse typos, truncations and random floods without a cache
//! or store lookup. The store only ever sees a keyed BLAKE3 hash of a secret.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::config::{QuotaSpec, RateLimitSpec};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Characters of base62 needed for 32 bytes: 62^43 > 2^256.
const BODY_RANDOM_LEN: usize = 43;
/// Characters of base62 needed for a CRC32: 62^6 > 2^32.
const CHECKSUM_LEN: usize = 6;
/// Characters of base62 needed for 16 bytes: 62^22 > 2^128.
const ID_LEN: usize = 22;
/// Body characters shown in a key's displayed prefix.
const PREFIX_BODY_CHARS: usize = 4;
/// Length bounds of imported (foreign-format) secrets, SPEC §1.
pub const FOREIGN_MIN_LEN: usize = 16;
/// See [`FOREIGN_MIN_LEN`].
pub const FOREIGN_MAX_LEN: usize = 256;

/// Domain-separation context for deriving the hashing key from the configured pepper.
const PEPPER_CONTEXT: &str = "keygate 2026-11 secret hashing key v1";
/// Context deriving the key of [`SecretHasher::sha256_tag`] from the hashing key.
const SHA256_TAG_CONTEXT: &str = "keygate 2026-11 sha256 tag key v1";

/// Encodes `bytes` (big-endian) as exactly `width` base62 digits.
fn base62_fixed(bytes: &[u8], width: usize, out: &mut String) {
    let mut num = bytes.to_vec();
    let mut digits = vec![0u8; width];
    for slot in digits.iter_mut().rev() {
        // Long division of the whole number by 62; the remainder is the next digit.
        let mut rem: u32 = 0;
        for byte in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = BASE62[rem as usize];
    }
    out.extend(digits.iter().map(|&d| d as char));
}

fn checksum_of(text: &str) -> [u8; CHECKSUM_LEN] {
    let mut value = crc32fast::hash(text.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // The OS CSPRNG failing is not recoverable for a key issuer; every caller would have to abort.
    getrandom::fill(&mut buf).expect("the OS random number generator is available");
    buf
}

/// `n` random base62 characters from the OS CSPRNG (for ids of audit entries and the like).
pub fn random_base62(n: usize) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in random_bytes::<32>() {
            // 248 = 4 × 62: rejecting the rest keeps every character equally likely.
            if b < 248 && out.len() < n {
                out.push(BASE62[usize::from(b % 62)] as char);
            }
        }
    }
    out
}

/// A plaintext secret. It cannot be printed: `Debug` shows a placeholder and there is no
/// `Display`, so it cannot reach a log or a panic message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a plaintext secret received from a caller (import).
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The plaintext, for the one response that returns it and for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The secret format of this deployment: `<prefix>_<env>_`.
#[derive(Clone, Debug)]
pub struct SecretFormat {
    lead: String,
}

/// What a presented credential looks like, before any lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// keygate format with a valid checksum: worth a lookup.
    Native,
    /// Not keygate's format but a plausible imported secret (16–256 printable characters).
    Foreign,
    /// Carries keygate's lead but the wrong shape or checksum, or is not a plausible secret at
    /// all: refused without touching cache or store.
    Malformed,
}

impl SecretFormat {
    /// The format for `prefix` and `environment` from config (`keys.prefix`, `keys.environment`).
    pub fn new(prefix: &str, environment: &str) -> Self {
        SecretFormat {
            lead: format!("{prefix}_{environment}_"),
        }
    }

    /// Generates a new secret from the OS CSPRNG.
    pub fn generate(&self) -> Secret {
        let mut s = String::with_capacity(self.lead.len() + BODY_RANDOM_LEN + CHECKSUM_LEN);
        s.push_str(&self.lead);
        base62_fixed(&random_bytes::<32>(), BODY_RANDOM_LEN, &mut s);
        let sum = checksum_of(&s);
        s.extend(sum.iter().map(|&c| c as char));
        Secret(s)
    }

    /// Classifies a presented credential. Cheap: a prefix compare and a CRC32, no allocation.
    pub fn shape(&self, candidate: &str) -> Shape {
        if let Some(rest) = candidate.strip_prefix(self.lead.as_str()) {
            let ok = rest.len() == BODY_RANDOM_LEN + CHECKSUM_LEN
                && rest.bytes().all(|b| b.is_ascii_alphanumeric())
                && {
                    let split = candidate.len() - CHECKSUM_LEN;
                    checksum_of(&candidate[..split]).as_slice() == &candidate.as_bytes()[split..]
                };
            return if ok { Shape::Native } else { Shape::Malformed };
        }
        if is_plausible_foreign(candidate) {
            Shape::Foreign
        } else {
            Shape::Malformed
        }
    }

    /// The displayed start of a keygate secret, e.g. `kg_live_7Hq2`.
    pub fn display_prefix(&self, secret: &Secret) -> String {
        display_prefix(secret.expose(), self.lead.len() + PREFIX_BODY_CHARS)
    }
}

/// Whether `s` may be an imported secret: 16–256 printable ASCII characters, no spaces.
pub fn is_plausible_foreign(s: &str) -> bool {
    (FOREIGN_MIN_LEN..=FOREIGN_MAX_LEN).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The displayed prefix of an imported secret: its start, never more than half of it.
pub fn foreign_display_prefix(secret: &Secret) -> String {
    let s = secret.expose();
    // For `edsk_live_abc1…` style secrets show through the last `_` of the lead plus 4 chars.
    // Counted in bytes and cut on a character boundary: slicing a `str` inside a multi-byte
    // character panics, with the secret in the panic message (found by fuzzing).
    let lead = s.as_bytes()[..s.len().min(24)]
        .iter()
        .rposition(|&b| b == b'_')
        .map_or(0, |i| i + 1);
    let max = (lead + PREFIX_BODY_CHARS).min(s.len() / 2);
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    s[..end].to_owned()
}

fn display_prefix(s: &str, chars: usize) -> String {
    s.chars().take(chars).collect()
}

/// Keyed BLAKE3 hash of a secret: what the store indexes keys by.
#[derive(Clone, Copy, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct SecretHash(pub [u8; 32]);

impl PartialEq for SecretHash {
    /// Constant-time, so comparing hashes reveals nothing about where they differ.
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::hash::Hash for SecretHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The value is already uniformly distributed; the first 8 bytes are as good as all 32.
        state.write(&self.0[..8]);
    }
}

impl SecretHash {
    /// Lowercase hex, as used in store keys.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(SecretHash(out))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A short fingerprint is enough to tell hashes apart in test output.
        write!(f, "SecretHash({}…)", &self.to_hex()[..8])
    }
}

impl From<SecretHash> for String {
    fn from(h: SecretHash) -> String {
        h.to_hex()
    }
}

impl TryFrom<String> for SecretHash {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        SecretHash::from_hex(&s).ok_or("a secret hash is 64 hex digits")
    }
}

/// Hashes secrets with a key derived from `secrets.pepper`, so a leaked store cannot be used to
/// check guesses offline.
#[derive(Clone)]
pub struct SecretHasher {
    key: [u8; 32],
}

impl SecretHasher {
    /// Derives the hashing key from the configured pepper.
    pub fn new(pepper: &str) -> Self {
        SecretHasher {
            key: blake3::derive_key(PEPPER_CONTEXT, pepper.as_bytes()),
        }
    }

    /// The keyed hash of a presented secret.
    pub fn hash(&self, secret: &str) -> SecretHash {
        SecretHash(*blake3::keyed_hash(&self.key, secret.as_bytes()).as_bytes())
    }

    /// The keyed tag of a secret's SHA-256 digest ([`KeyRecord::sha256_tag`]): what an import
    /// in either form (plaintext or digest) can compute, hashed with a key of its own derived
    /// from the pepper, so that the store never keeps an unkeyed digest longer than it did.
    pub fn sha256_tag(&self, digest: &SecretHash) -> SecretHash {
        let key = blake3::derive_key(SHA256_TAG_CONTEXT, &self.key);
        SecretHash(*blake3::keyed_hash(&key, &digest.0).as_bytes())
    }
}

impl fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHasher(<redacted>)")
    }
}

/// A key's public id: `key_` + 22 base62 characters. Safe to log.
///
/// Held inline (26 bytes, no heap allocation): every cached key carries one, and ids are
/// compared and hashed on the request path (quota and rate-limit buckets).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId([u8; KEY_ID_LEN]);

/// Bytes of a key id: `key_` and [`ID_LEN`] base62 characters.
const KEY_ID_LEN: usize = 4 + ID_LEN;

impl KeyId {
    /// A new random id.
    pub fn generate() -> Self {
        let mut s = String::with_capacity(KEY_ID_LEN);
        s.push_str("key_");
        base62_fixed(&random_bytes::<16>(), ID_LEN, &mut s);
        KeyId::parse(&s).expect("a generated id has the documented shape")
    }

    /// Parses an id, as found in an admin API path.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_prefix("key_")?;
        (body.len() == ID_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| KeyId(s.as_bytes().try_into().expect("length checked above")))
    }

    /// The id's bytes (ASCII), without the UTF-8 check of [`KeyId::as_str`].
    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // ASCII by construction (`parse` is the only way in).
        std::str::from_utf8(&self.0).expect("a key id is ASCII")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.as_str().to_owned()
    }
}

impl TryFrom<String> for KeyId {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        KeyId::parse(&s).ok_or("a key id is `key_` and 22 base62 characters")
    }
}

/// How [`KeyRecord::hash`] was computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashScheme {
    /// Keyed BLAKE3 with the pepper: every key keygate issued, and imported plaintext secrets.
    #[default]
    KeyedBlake3,
    /// Plain SHA-256 of the secret, from an import out of a system that kept only that. The
    /// store indexes it apart, and it is replaced by keyed BLAKE3 on the key's first successful
    /// use.
    Sha256,
}

impl HashScheme {
    fn is_default(&self) -> bool {
        *self == HashScheme::KeyedBlake3
    }
}

/// A key's derived status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Past `expires_at`.
    Expired,
    /// Revoked; irreversible.
    Revoked,
}

impl KeyStatus {
    /// The status as it appears in JSON and query strings.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        }
    }
}

/// A key as the store keeps it. Never holds the secret, only its keyed hash.
///
/// `usage_count` and `last_used_at` are kept apart from the rest by the stores, so that an edit
/// of the record never overwrites counts the usage flusher wrote meanwhile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id.
    pub id: KeyId,
    /// Workspace the key belongs to.
    pub workspace: String,
    /// Display name, 1–100 characters.
    pub name: String,
    /// Optional description, at most 500 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Displayed start of the secret, e.g. `kg_live_7Hq2`.
    pub prefix: String,
    /// Hash of the secret: keyed BLAKE3, or SHA-256 for a not yet used `sha256` import.
    pub hash: SecretHash,
    /// How `hash` was computed.
    #[serde(default, skip_serializing_if = "HashScheme::is_default")]
    pub hash_scheme: HashScheme,
    /// Explicitly granted scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Named scope set from config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Client addresses allowed to use the key; empty means any.
    #[serde(default, with = "crate::config::ip_list")]
    pub ip_allowlist: Vec<IpNet>,
    /// When the key stops working.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
    /// Per-key rate limit override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Per-key usage allowance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
    /// External id of the customer the key belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Free-form JSON object, at most 1 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who created it (admin token name or key id).
    pub created_by: String,
    /// Last change to the record.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When it was revoked.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub revoked_at: Option<OffsetDateTime>,
    /// Last successful use (maintained by the usage flusher, not by record writes).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_used_at: Option<OffsetDateTime>,
    /// Successful uses (maintained by the usage flusher, not by record writes).
    #[serde(default)]
    pub usage_count: u64,
    /// An imported key's [`SecretHasher::sha256_tag`], kept for the key's lifetime (also after
    /// the upgrade of a `sha256` import): the stores index it, so one secret is one key whatever
    /// form it was imported in. `None` for keys keygate issued, whose secrets are never imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_tag: Option<SecretHash>,
    /// The key this one replaced by rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<KeyId>,
    /// The key that replaced this one by rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<KeyId>,
}

impl KeyRecord {
    /// The derived status at `now`. Revocation wins over expiry.
    pub fn status_at(&self, now: OffsetDateTime) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format() -> SecretFormat {
        SecretFormat::new("kg", "live")
    }

    #[test]
    fn generated_secrets_have_the_documented_shape() {
        let f = format();
        let s = f.generate();
        let text = s.expose();
        assert!(text.starts_with("kg_live_"));
        assert_eq!(text.len(), "kg_live_".len() + 43 + 6);
        assert_eq!(f.shape(text), Shape::Native);
        assert_ne!(f.generate(), s, "two secrets must differ");
        let prefix = f.display_prefix(&s);
        assert_eq!(prefix.len(), "kg_live_".len() + 4);
        assert!(text.starts_with(&prefix));
    }

    #[test]
    fn checksum_rejects_typos_truncation_and_other_environments() {
        let f = format();
        let s = f.generate();
        let text = s.expose();
        // One changed character anywhere in the body.
        for i in ["kg_live_".len(), text.len() - 10, text.len() - 1] {
            let mut bytes = text.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).unwrap();
            assert_eq!(f.shape(&typo), Shape::Malformed, "typo at {i}");
        }
        assert_eq!(f.shape(&text[..text.len() - 1]), Shape::Malformed);
        assert_eq!(f.shape(&format!("{text}x")), Shape::Malformed);
        assert_eq!(f.shape("kg_live_"), Shape::Malformed);
        assert_eq!(f.shape("kg_live_ä"), Shape::Malformed);
        // A test-environment secret is foreign to a live gateway, not native.
        let test_env = SecretFormat::new("kg", "test").generate();
        assert_eq!(f.shape(test_env.expose()), Shape::Foreign);
    }

    #[test]
    fn foreign_secrets_need_16_to_256_printable_characters() {
        let f = format();
        assert_eq!(f.shape("edsk_live_abcdef1234567890"), Shape::Foreign);
        assert_eq!(f.shape("short"), Shape::Malformed);
        assert_eq!(f.shape(&"x".repeat(257)), Shape::Malformed);
        assert_eq!(f.shape("has a space inside it"), Shape::Malformed);
        assert_eq!(
            foreign_display_prefix(&Secret::new("edsk_live_abc1defghijklmnopqrstuv".into())),
            "edsk_live_abc1"
        );
        assert_eq!(
            foreign_display_prefix(&Secret::new("0123456789abcdef".into())),
            "0123"
        );
        assert_eq!(
            foreign_display_prefix(&Secret::new("sk_live_abcdefghijkl".into())),
            "sk_live_ab"
        );
    }

    #[test]
    fn foreign_display_prefix_cuts_on_character_boundaries() {
        // Found by fuzzing (fuzz/corpus/secret_parsing/seed-crash-foreign-prefix-utf8): byte 24
        // inside a multi-byte character panicked, and the panic message quoted the secret.
        let found = "has \u{8}\0\0\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\u{fffd}\0\0\0\0\0a space ]inside ef";
        for s in [
            found,
            &format!("{}é{}", "a".repeat(23), "b".repeat(10)),
            "éééééééééééééééé",
            "ab_cd_éééééééééééééééééé",
        ] {
            let shown = foreign_display_prefix(&Secret::new(s.into()));
            assert!(s.starts_with(&shown), "{s:?}");
            assert!(shown.len() <= s.len() / 2, "{s:?}");
        }
        assert_eq!(
            foreign_display_prefix(&Secret::new("éééééééééé".into())),
            "éé"
        );
    }

    #[test]
    fn hashing_is_keyed_by_the_pepper() {
        let a = SecretHasher::new("pepper-one");
        let b = SecretHasher::new("pepper-two");
        assert_eq!(a.hash("kg_live_x"), a.hash("kg_live_x"));
        assert_ne!(a.hash("kg_live_x"), b.hash("kg_live_x"));
        assert_ne!(a.hash("kg_live_x"), a.hash("kg_live_y"));
        let h = a.hash("secret");
        assert_eq!(SecretHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(SecretHash::from_hex("zz"), None);
    }

    #[test]
    fn secrets_and_hashers_never_print_their_value() {
        let s = Secret::new("kg_live_supersecretvalue".into());
        assert!(!format!("{s:?}").contains("supersecret"));
        assert!(!format!("{:?}", SecretHasher::new("pepper")).contains("pepper"));
    }

    #[test]
    fn key_ids_are_key_underscore_and_22_base62() {
        let id = KeyId::generate();
        assert!(id.as_str().starts_with("key_"));
        assert_eq!(id.as_str().len(), 26);
        assert_eq!(KeyId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(KeyId::parse("key_short"), None);
        assert_eq!(KeyId::parse("nope_0123456789012345678901"), None);
        assert_ne!(KeyId::generate(), id);
    }

    #[test]
    fn base62_is_fixed_width_and_exact() {
        let mut s = String::new();
        base62_fixed(&[0, 0], 3, &mut s);
        assert_eq!(s, "000");
        s.clear();
        base62_fixed(&[0, 62], 3, &mut s);
        assert_eq!(s, "010");
        s.clear();
        base62_fixed(&[0xff; 32], 43, &mut s);
        assert_eq!(s.len(), 43);
    }
}
