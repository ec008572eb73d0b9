//! The API key format: `sk-mume-` + public id (8) + secret (33) + checksum (6),
//! all base62. The secret carries 192 random bits. The checksum (CRC-32 of
//! everything before it) lets a typo or a foreign token be refused without a
//! store lookup. Only the SHA-256 of the whole key and a short display form
//! are ever stored.

use sha2::{Digest, Sha256};

pub const PREFIX: &str = "sk-mume-";
pub const ID_LEN: usize = 8;
const SECRET_LEN: usize = 33;
const CHECK_LEN: usize = 6;
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + SECRET_LEN + CHECK_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Whether `value` is (or looks like) a key of this gateway, which must
/// never be sent to an upstream as the provider's key.
pub fn is_gateway_key(value: &str) -> bool {
    value.starts_with(PREFIX)
}

/// SHA-256 of a whole key: what the store keeps instead of the key.
pub type KeyHash = [u8; 32];

/// Why a token is not a well-formed key (no store lookup was made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Prefix,
    Length,
    Alphabet,
    Checksum,
}

/// A plaintext key. It exists only while a key is created or checked; it
/// is not `Debug` or `Display`, so it cannot end up in a log by accident.
pub struct PlainKey(String);

impl PlainKey {
    /// A new key with a fresh random id and secret.
    pub fn generate() -> Self {
        let id = base62(rand::random::<u64>() as u128, ID_LEN);
        let mut secret = base62(rand::random::<u128>(), 22);
        secret.push_str(&base62(rand::random::<u64>() as u128, SECRET_LEN - 22));
        Self::from_parts(&id, &secret)
    }

    /// A key from a given id and secret (both base62, of the right length).
    /// Used by `generate` and by tests that need a fixed key.
    pub fn from_parts(id: &str, secret: &str) -> Self {
        assert!(id.len() == ID_LEN && secret.len() == SECRET_LEN);
        let body = format!("{PREFIX}{id}{secret}");
        let check = base62(crc32fast::hash(body.as_bytes()) as u128, CHECK_LEN);
        Self(body + &check)
    }

    /// Checks the format and checksum only.
    pub fn parse(token: &str) -> Result<Self, Malformed> {
        let rest = token.strip_prefix(PREFIX).ok_or(Malformed::Prefix)?;
        if token.len() != KEY_LEN {
            return Err(Malformed::Length);
        }
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Malformed::Alphabet);
        }
        let (body, check) = token.split_at(KEY_LEN - CHECK_LEN);
        if base62(crc32fast::hash(body.as_bytes()) as u128, CHECK_LEN) != check {
            return Err(Malformed::Checksum);
        }
        Ok(Self(token.to_string()))
    }

    /// The key's public id: safe to log and to show.
    pub fn id(&self) -> &str {
        &self.0[PREFIX.len()..PREFIX.len() + ID_LEN]
    }

    pub fn hash(&self) -> KeyHash {
        hash_token(&self.0)
    }

    /// What a person sees to recognise the key: the prefix and the last
    /// four characters, never a longer run of the key.
    pub fn display(&self) -> String {
        format!("{PREFIX}…{}", &self.0[KEY_LEN - 4..])
    }

    /// The plaintext, to hand to its owner exactly once.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

pub fn hash_token(token: &str) -> KeyHash {
    Sha256::digest(token.as_bytes()).into()
}

/// `value` in base62, left-padded to exactly `width` digits (high digits
/// beyond `width` are dropped; callers size `width` to fit their value).
fn base62(mut value: u128, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8(out).expect("base62 is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = PlainKey::generate();
        let b = PlainKey::generate();
        assert_ne!(a.reveal(), b.reveal());
        assert_eq!(a.reveal().len(), KEY_LEN);
        let parsed = PlainKey::parse(a.reveal()).expect("a generated key is well formed");
        assert_eq!(parsed.id(), a.id());
        assert_eq!(parsed.hash(), a.hash());
    }

    #[test]
    fn every_kind_of_malformed_token_is_named() {
        let good = PlainKey::generate();
        let key = good.reveal();
        assert_eq!(
            PlainKey::parse("sk-proj-abc").err(),
            Some(Malformed::Prefix)
        );
        assert_eq!(
            PlainKey::parse(&key[..KEY_LEN - 1]).err(),
            Some(Malformed::Length)
        );
        let mut bad_char = key.to_string();
        bad_char.replace_range(12..13, "-");
        assert_eq!(PlainKey::parse(&bad_char).err(), Some(Malformed::Alphabet));
        // One changed character anywhere in the secret breaks the checksum.
        let mut typo = key.as_bytes().to_vec();
        typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(PlainKey::parse(&typo).err(), Some(Malformed::Checksum));
    }

    #[test]
    fn display_form_shows_no_run_of_the_key_longer_than_eight() {
        let key = PlainKey::generate();
        let shown = key.display();
        assert!(shown.starts_with(PREFIX) && shown.ends_with(&key.reveal()[KEY_LEN - 4..]));
        assert!(!shown.contains(key.id()));
    }
}
