//! Secret parsing: `SecretFormat::shape` and the other parsers of key material in `keygate::keys`
//! (displayed prefixes, hash hex, key ids) on arbitrary text, for any valid `keys.prefix` and
//! `keys.environment` (the candidate's own, when valid, or the default).
//!
//! Invariants, besides "never panics":
//! - `shape` agrees with SPEC §1 as re-implemented here: a candidate carrying the lead is
//!   `Native` exactly when its body is 43 base62 characters and a 6-character base62 CRC32 of the
//!   rest, else `Malformed`; without the lead it is `Foreign` exactly when it has 16–256 printable
//!   ASCII characters.
//! - A secret built from the input the way keygate builds one is `Native`, and any one changed
//!   character makes it `Malformed` (CRC32 catches every error burst of 32 bits or fewer).
//! - `generate` always yields a `Native` secret whose displayed prefix is its start.
//! - Displayed prefixes are a prefix of the secret, and of an imported one never more than half.
//! - Hash hex and key ids read back to what was parsed.
#![no_main]

use keygate::keys::{
    KeyId, Secret, SecretFormat, SecretHash, Shape, foreign_display_prefix, is_plausible_foreign,
};
use libfuzzer_sys::fuzz_target;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// SPEC §1's checksum, written apart from the library's: CRC32 as 6 big-endian base62 digits.
fn reference_checksum(text: &str) -> String {
    let mut value = crc32fast::hash(text.as_bytes());
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(out.to_vec()).expect("base62 is ASCII")
}

/// What SPEC §1 says `shape` answers.
fn reference_shape(lead: &str, candidate: &str) -> Shape {
    match candidate.strip_prefix(lead) {
        Some(rest) => {
            let native = rest.len() == 49
                && rest.bytes().all(|b| b.is_ascii_alphanumeric())
                && reference_checksum(&candidate[..candidate.len() - 6]) == rest[43..];
            if native {
                Shape::Native
            } else {
                Shape::Malformed
            }
        }
        None if (16..=256).contains(&candidate.len())
            && candidate.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Shape::Foreign
        }
        None => Shape::Malformed,
    }
}

/// 1–16 ASCII letters or digits: what config validation lets through for prefix and environment.
fn is_config_word(s: &str) -> bool {
    (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The format to check against: the candidate's own `<prefix>_<env>_` when the control byte says
/// so and those are valid config words (so custom formats reach the checksum path), else the
/// default `kg_live_`.
fn format_for(control: u8, candidate: &str) -> (SecretFormat, String) {
    let mut parts = candidate.splitn(3, '_');
    let (prefix, env) = match (parts.next(), parts.next()) {
        (Some(p), Some(e)) if control & 1 == 1 && is_config_word(p) && is_config_word(e) => (p, e),
        _ => ("kg", "live"),
    };
    (SecretFormat::new(prefix, env), format!("{prefix}_{env}_"))
}

fn check(control: u8, candidate: &str) {
    let (format, lead) = format_for(control, candidate);

    // A secret assembled from the input as keygate assembles one: the body maps the input's
    // bytes onto base62.
    let mut built = lead.clone();
    let mut bytes = candidate.bytes().chain(std::iter::repeat(control));
    for _ in 0..43 {
        let b = bytes.next().expect("repeat is endless");
        built.push(char::from(BASE62[usize::from(b) % 62]));
    }
    built += &reference_checksum(&built);
    assert_eq!(format.shape(&built), Shape::Native, "a well-built secret");
    let at = lead.len() + usize::from(control >> 1) % 49;
    let mut typo = built.clone().into_bytes();
    let replacement = BASE62[usize::from(control) % 62];
    if typo[at] != replacement {
        typo[at] = replacement;
        let typo = String::from_utf8(typo).expect("ASCII stays UTF-8");
        assert_eq!(
            format.shape(&typo),
            Shape::Malformed,
            "one changed character"
        );
    }
    // Generation draws from the OS random source (one getrandom call): not reproducible from the
    // input, but the property must hold for every draw.
    let generated = format.generate();
    assert_eq!(
        format.shape(generated.expose()),
        Shape::Native,
        "a generated secret"
    );
    assert!(
        generated
            .expose()
            .starts_with(&format.display_prefix(&generated))
    );

    let shape = format.shape(candidate);
    assert_eq!(shape, reference_shape(&lead, candidate));
    if shape == Shape::Foreign {
        assert!(is_plausible_foreign(candidate));
    }

    let secret = Secret::new(candidate.to_owned());
    let shown = foreign_display_prefix(&secret);
    assert!(
        candidate.starts_with(&shown),
        "a displayed prefix is a prefix"
    );
    assert!(shown.len() <= candidate.len() / 2, "never more than half");
    assert!(candidate.starts_with(&format.display_prefix(&secret)));
    assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");

    if let Some(hash) = SecretHash::from_hex(candidate) {
        assert_eq!(hash.to_hex(), candidate.to_ascii_lowercase());
    }
    if let Some(id) = KeyId::parse(candidate) {
        assert_eq!(id.as_str(), candidate);
    }
}

// The first byte steers (format, typo position); the rest, read as UTF-8 with invalid bytes
// replaced, is the candidate, so seeds and findings read as the secrets they are.
fuzz_target!(|data: &[u8]| {
    if let Some((&control, rest)) = data.split_first() {
        check(control, &String::from_utf8_lossy(rest));
    }
});
