//! `leaks:` (SPEC §9): reports of leaked keys in the format of GitHub's secret scanning partner
//! program, what to do with a live key reported, and the keys their signatures are checked with.

use serde::Deserialize;

/// `leaks:`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Leaks {
    /// Keys a report's signature may verify with, by `Github-Public-Key-Identifier`. Without
    /// any, every report is refused.
    #[serde(default)]
    pub public_keys: Vec<LeakPublicKey>,
    /// What happens to a live key reported: revoked (default) or only reported.
    #[serde(default)]
    pub action: LeakAction,
    /// Where the proxy listener also takes reports (GitHub must reach it from outside), e.g.
    /// `/.well-known/keygate/leaks`; none by default.
    #[serde(default)]
    pub public_path: Option<String>,
}

/// One signing key of the reporter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakPublicKey {
    /// `Github-Public-Key-Identifier`.
    pub id: String,
    /// The ECDSA P-256 public key, PEM (`-----BEGIN PUBLIC KEY-----`).
    pub pem: String,
}

/// `leaks.action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakAction {
    /// Revoke the key, then report it.
    #[default]
    Revoke,
    /// Only report it (audit, webhook).
    Notify,
}

/// DER prefix of a P-256 `SubjectPublicKeyInfo` with an uncompressed point: id-ecPublicKey,
/// prime256v1, then the 66-byte BIT STRING header (`03 42 00`).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl LeakPublicKey {
    /// The uncompressed point (`04 || X || Y`) of the PEM key, as ring verifies with it.
    pub fn point(&self) -> Result<Vec<u8>, String> {
        use rustls::pki_types::SubjectPublicKeyInfoDer;
        use rustls::pki_types::pem::PemObject;
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(self.pem.as_bytes())
            .map_err(|e| format!("not a PEM public key: {e}"))?;
        let der: &[u8] = spki.as_ref();
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 4 => Ok(point.to_vec()),
            _ => Err("not an ECDSA P-256 public key (uncompressed)".into()),
        }
    }
}

impl Leaks {
    /// Every problem, as `(field below leaks, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, key) in self.public_keys.iter().enumerate() {
            if key.id.is_empty() {
                out.push((format!("public_keys[{i}].id"), "must not be empty".into()));
            }
            if let Err(e) = key.point() {
                out.push((format!("public_keys[{i}].pem"), e));
            }
        }
        if let Some(path) = &self.public_path
            && (!path.starts_with('/') || path.contains(['?', '#']) || path.len() < 2)
        {
            out.push((
                "public_path".into(),
                "must be a path such as /.well-known/keygate/leaks".into(),
            ));
        }
        out
    }
}
