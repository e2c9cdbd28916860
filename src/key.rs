//! The ephemeral key: generated from OS randomness for one connection, never
//! written to disk, never printed, wiped from memory when dropped.

use std::fmt;

use anyhow::Context;
use ssh_encoding::Encode;
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, PrivateKey};

/// An ed25519 key pair that lives only in this process's memory.
pub struct EphemeralKey {
    private: PrivateKey,
    /// The same secret, ready to sign: built once, wiped on drop (as is the
    /// expanded secret each signature computes).
    signing: ed25519_dalek::SigningKey,
    public_line: String,
}

impl EphemeralKey {
    /// Generates a fresh ed25519 key pair.
    pub fn generate() -> anyhow::Result<Self> {
        let private = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .context("could not generate an ed25519 key")?;
        Self::from_private(private)
    }

    fn from_private(private: PrivateKey) -> anyhow::Result<Self> {
        // A bare `ssh-ed25519 <base64>` (no comment) is what the service
        // expects; it is exactly 80 characters, the API's minimum.
        let mut public = private.public_key().clone();
        public.set_comment("");
        let public_line = public
            .to_openssh()
            .context("could not encode the public key")?;
        let signing = ed25519_dalek::SigningKey::from(
            private
                .key_data()
                .ed25519()
                .context("the ephemeral key is not ed25519")?
                .private
                .clone(),
        );
        Ok(EphemeralKey {
            private,
            signing,
            public_line,
        })
    }

    /// `ssh-ed25519 AAAA…`, as sent to SendSSHPublicKey and written to the
    /// identity file ssh reads to pick the agent key.
    pub fn public_openssh(&self) -> &str {
        &self.public_line
    }

    /// The public key in SSH wire encoding (the agent protocol's key blob).
    pub fn public_blob(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.private.public_key().to_bytes()?)
    }

    /// Signs `data`, returning the SSH wire-encoded signature
    /// (`string algorithm, string signature`).
    pub fn sign(&self, data: &[u8]) -> anyhow::Result<Vec<u8>> {
        use signature::Signer;
        let sig = self.signing.try_sign(data)?;
        let sig = ssh_key::Signature::new(Algorithm::Ed25519, sig.to_bytes().to_vec())?;
        let mut out = Vec::with_capacity(sig.encoded_len()?);
        sig.encode(&mut out)?;
        Ok(out)
    }

    /// `SHA256:…` fingerprint, safe to log.
    pub fn fingerprint(&self) -> String {
        self.private
            .public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string()
    }
}

impl fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralKey")
            .field("public", &self.public_line)
            .field("private", &"(redacted)")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_encoding::Decode;

    /// Standard base64 with padding, as OpenSSH writes key material.
    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn base64_matches_openssh() {
        let key = EphemeralKey::generate().unwrap();
        let blob = key.public_blob().unwrap();
        assert_eq!(
            format!("ssh-ed25519 {}", base64(&blob)),
            key.public_openssh()
        );
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }

    #[test]
    fn public_key_is_a_bare_80_char_ed25519_line() {
        let key = EphemeralKey::generate().unwrap();
        let line = key.public_openssh();
        assert_eq!(line.len(), 80, "{line}");
        // Exactly the algorithm and the key: one space, no comment.
        assert_eq!(line.matches(' ').count(), 1, "{line:?}");
        let (algorithm, data) = line.split_once(' ').unwrap();
        assert_eq!(algorithm, "ssh-ed25519");
        assert!(
            data.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')),
            "{line:?}"
        );
        let parsed = ssh_key::PublicKey::from_openssh(line).unwrap();
        assert_eq!(parsed.comment(), "");
        assert_eq!(parsed.to_bytes().unwrap(), key.public_blob().unwrap());
    }

    #[test]
    fn keys_are_fresh_and_debug_is_redacted() {
        let a = EphemeralKey::generate().unwrap();
        let b = EphemeralKey::generate().unwrap();
        assert_ne!(a.public_openssh(), b.public_openssh());
        let debug = format!("{a:?}");
        assert!(debug.contains("(redacted)"), "{debug}");
        assert!(debug.contains(a.public_openssh()), "{debug}");

        // No part of the private key in OpenSSH's file format...
        let file = a.private.to_openssh(ssh_key::LineEnding::LF).unwrap();
        let body: Vec<&str> = file.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!body.is_empty());
        for line in body {
            assert!(!debug.contains(line), "{debug}");
        }
        // ...nor the secret key bytes, in base64, hex or as a byte list.
        let pair = a.private.key_data().ed25519().unwrap();
        let seed = pair.private.to_bytes();
        let seed_and_public = pair.to_bytes();
        for secret in [&seed[..], &seed_and_public[..]] {
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            let list = format!("{secret:?}");
            for shown in [base64(secret), hex.clone(), hex.to_uppercase()] {
                assert!(!debug.contains(&shown), "{debug}");
            }
            assert!(!debug.contains(&list[1..list.len() - 1]), "{debug}");
        }
    }

    /// The signing key wipes itself (and, with the same feature, so does
    /// the expanded secret each signature computes): without ed25519-dalek's
    /// `zeroize` feature this does not compile.
    #[test]
    fn the_signing_key_wipes_itself() {
        fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wipes_on_drop::<ed25519_dalek::SigningKey>();
    }

    #[test]
    fn signatures_verify_against_the_public_key() {
        let key = EphemeralKey::generate().unwrap();
        let blob = key.sign(b"session data").unwrap();
        // The wire form: string "ssh-ed25519", string signature, nothing more.
        let mut rest = blob.as_slice();
        assert_eq!(String::decode(&mut rest).unwrap(), "ssh-ed25519");
        let sig_bytes = Vec::<u8>::decode(&mut rest).unwrap();
        assert_eq!(sig_bytes.len(), 64);
        assert!(rest.is_empty());
        assert_eq!(blob.len(), 4 + 11 + 4 + 64);
        let sig = ssh_key::Signature::new(Algorithm::Ed25519, sig_bytes).unwrap();
        let public = ssh_key::PublicKey::from_openssh(key.public_openssh()).unwrap();
        signature::Verifier::verify(public.key_data(), b"session data", &sig).unwrap();
        assert!(signature::Verifier::verify(public.key_data(), b"other data", &sig).is_err());
    }
}
