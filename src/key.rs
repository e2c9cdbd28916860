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

    #[test]
    fn public_key_is_a_bare_80_char_ed25519_line() {
        let key = EphemeralKey::generate().unwrap();
        let line = key.public_openssh();
        assert!(line.starts_with("ssh-ed25519 AAAA"), "{line}");
        assert_eq!(line.len(), 80);
        assert!(!line.contains(' ') || line.matches(' ').count() == 1);
    }

    #[test]
    fn keys_are_fresh_and_debug_is_redacted() {
        let a = EphemeralKey::generate().unwrap();
        let b = EphemeralKey::generate().unwrap();
        assert_ne!(a.public_openssh(), b.public_openssh());
        let debug = format!("{a:?}");
        assert!(debug.contains("(redacted)"));
        assert!(!debug.contains("PRIVATE"));
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
