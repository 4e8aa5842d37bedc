//! Secret bytes and access tokens: the only types in habitus that hold
//! values a build must never print or store.
//!
//! Both live in buffers that are overwritten with zeros when dropped
//! ([`zeroize`]), neither implements `Display`, and their `Debug` output
//! shows only a length. The one way to the value is a method named
//! `expose`, and every call site says why it needs it.

use std::fmt;

use rand::TryRngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The value of one secret (a key file, a token from the environment).
///
/// Invariant: the bytes are never copied out of this buffer except through
/// [`Secret::expose`], and the buffer is zeroed on drop.
pub struct Secret {
    bytes: Zeroizing<Vec<u8>>,
}

impl Secret {
    /// Takes ownership of `bytes`; they are zeroed when the secret is dropped.
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// The length in bytes (not secret: a response carries it anyway).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The secret bytes.
    ///
    /// Every use must explain why it needs the value: the server writes it
    /// into a response body, the redactor searches output for it, the
    /// post-build audit searches the produced images for it.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted>, {} bytes)", self.bytes.len())
    }
}

/// Length of a token in random bytes (256 bits).
const TOKEN_BYTES: usize = 32;

/// A bearer token for the secrets server: 256 bits from the operating
/// system's CSPRNG, written as 64 lowercase hex digits.
///
/// Equality is constant-time; the text is zeroed on drop.
pub struct Token {
    text: Zeroizing<String>,
}

impl Token {
    /// A fresh random token.
    ///
    /// # Panics
    ///
    /// If the operating system cannot provide random bytes (a broken
    /// system; there is no safe fallback).
    pub fn generate() -> Token {
        let mut raw = Zeroizing::new([0u8; TOKEN_BYTES]);
        rand::rngs::OsRng
            .try_fill_bytes(&mut raw[..])
            .expect("the operating system's random number generator failed");
        let mut text = Zeroizing::new(String::with_capacity(TOKEN_BYTES * 2));
        for byte in raw.iter() {
            text.push(HEX[usize::from(byte >> 4)]);
            text.push(HEX[usize::from(byte & 0xf)]);
        }
        Token { text }
    }

    /// The token as sent in `Authorization: Bearer <token>`.
    ///
    /// Uses: the runner passes it to its step as the `HABITUS_TOKEN` build
    /// argument; `habitus serve` prints it for the user.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// Constant-time comparison with what a client presented.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.text.as_bytes().ct_eq(presented).into()
    }
}

const HEX: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f',
];

impl Clone for Token {
    fn clone(&self) -> Token {
        Token {
            text: self.text.clone(),
        }
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.matches(other.text.as_bytes())
    }
}

impl Eq for Token {}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::{Secret, Token};

    #[test]
    fn debug_shows_only_the_length() {
        let secret = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>, 7 bytes)");
        let token = Token::generate();
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
        assert!(!format!("{token:?}").contains(token.expose()));
    }

    #[test]
    fn tokens_are_64_hex_digits_and_distinct() {
        let a = Token::generate();
        let b = Token::generate();
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(a.matches(a.expose().as_bytes()));
        assert!(!a.matches(b.expose().as_bytes()));
        assert!(!a.matches(&a.expose().as_bytes()[..63]));
        assert!(!a.matches(b""));
    }
}
