//! WireGuard keys: generation and the base64 form used by `wg` and the store.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519;
use rand::RngCore as _;

use crate::{MeshError, Result};

/// A WireGuard public key (Curve25519), shown as base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses the base64 form (`wg pubkey` output).
    pub fn from_base64(s: &str) -> Result<Self> {
        decode(s).map(PublicKey)
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The lowercase hex form used by the UAPI protocol.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A WireGuard private key. Its `Debug` form is redacted.
#[derive(Clone)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        // Clamp as `wg genkey` does, so the stored form is canonical.
        bytes[0] &= 0b1111_1000;
        bytes[31] &= 0b0111_1111;
        bytes[31] |= 0b0100_0000;
        PrivateKey(bytes)
    }

    /// Parses the base64 form (`wg genkey` output).
    pub fn from_base64(s: &str) -> Result<Self> {
        decode(s).map(PrivateKey)
    }

    /// The base64 form (for a wg config file).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The hex form used by the UAPI protocol.
    pub(crate) fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let secret = x25519::StaticSecret::from(self.0);
        PublicKey(x25519::PublicKey::from(&secret).to_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

fn decode(s: &str) -> Result<[u8; 32]> {
    let s = s.trim();
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|e| MeshError::Key(e.to_string()))?
    } else {
        STANDARD
            .decode(s)
            .map_err(|e| MeshError::Key(e.to_string()))?
    };
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| MeshError::Key(format!("{} bytes instead of 32", b.len())))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_hex_round_trip() {
        let key = PrivateKey::generate();
        let public = key.public_key();
        assert_eq!(PublicKey::from_base64(&public.to_base64()).unwrap(), public);
        assert_eq!(PublicKey::from_base64(&public.to_hex()).unwrap(), public);
        let again = PrivateKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(again.public_key(), public);
        assert!(PublicKey::from_base64("too short").is_err());
        assert!(!format!("{key:?}").contains(&key.to_base64()));
    }

    #[test]
    fn matches_a_known_wg_pubkey() {
        // `echo 'yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=' | wg pubkey`
        let key = PrivateKey::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
        assert_eq!(
            key.public_key().to_base64(),
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        );
    }
}
