//! TLS trust: the system's root certificates (including CAs an
//! administrator added to the system store, as corporate proxies need) plus
//! the PEM bundle in `AWS_CA_BUNDLE`.
//!
//! Loading the system store reads the bundle and then every file in
//! `/etc/ssl/certs` (about 150 files on Debian), so it is done once per
//! process and only when a TLS connection needs it: `--dry-run`, plain-HTTP
//! endpoints and connections reused through a master never pay for it.
//! [`prefetch`] starts it on a thread of its own when a TLS connection is
//! certain to come, so it overlaps with the work before that connection.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::Failure;

/// The trusted certificates, or why there are none.
pub type Roots = Result<Arc<Vec<CertificateDer<'static>>>, Failure>;

static ROOTS: OnceLock<Roots> = OnceLock::new();

/// The trusted certificates, loaded on first use.
pub fn roots() -> Roots {
    ROOTS.get_or_init(load).clone()
}

/// Starts loading the trusted certificates in the background, if not done
/// yet; [`roots`] then waits for that load instead of starting its own.
pub fn prefetch() {
    if ROOTS.get().is_none() {
        // If the thread cannot start, roots() loads them when asked.
        let _ = std::thread::Builder::new().name("trust".into()).spawn(|| {
            let _ = roots();
        });
    }
}

fn load() -> Roots {
    let started = std::time::Instant::now();
    let native = rustls_native_certs::load_native_certs();
    let mut certs = native.certs;
    tracing::debug!(
        certificates = certs.len(),
        errors = native.errors.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "loaded the system's root certificates"
    );
    if let Some(path) = std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty()) {
        let path = path.to_string_lossy().into_owned();
        let added = ca_bundle(&path)?;
        tracing::debug!(certificates = added.len(), path, "loaded AWS_CA_BUNDLE");
        certs.extend(added);
    }
    // Keep only what a TLS client can use as a trust anchor.
    certs.retain(|cert| webpki_anchor(cert));
    if certs.is_empty() {
        return Err(Failure::new("no trusted CA certificates were found").hint(
            "install the system's CA certificates (e.g. apt-get install ca-certificates), or set AWS_CA_BUNDLE",
        ));
    }
    Ok(Arc::new(certs))
}

/// The certificates in the PEM file at `path`.
fn ca_bundle(path: &str) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let shown = crate::sanitize::terminal_safe(path);
    let pem = std::fs::read(path).map_err(|err| {
        Failure::new(format!("cannot read AWS_CA_BUNDLE {shown}: {err}"))
            .hint("point AWS_CA_BUNDLE at a PEM file of CA certificates, or unset it")
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|err| {
            Failure::new(format!(
                "AWS_CA_BUNDLE {shown} is not a valid PEM file: {err}"
            ))
            .hint("point AWS_CA_BUNDLE at a PEM file of CA certificates, or unset it")
        })?;
    let usable = certs.iter().filter(|c| webpki_anchor(c)).count();
    if usable == 0 {
        return Err(Failure::new(format!(
            "AWS_CA_BUNDLE {shown} holds no usable CA certificate"
        ))
        .hint("point AWS_CA_BUNDLE at a PEM file of CA certificates, or unset it"));
    }
    Ok(certs)
}

fn webpki_anchor(cert: &CertificateDer<'_>) -> bool {
    let mut store = rustls::RootCertStore::empty();
    store.add(cert.clone()).is_ok()
}

/// A root store of the trusted certificates.
pub fn root_store() -> Result<rustls::RootCertStore, Failure> {
    let mut store = rustls::RootCertStore::empty();
    store.add_parsable_certificates(roots()?.iter().cloned());
    Ok(store)
}

/// The trusted certificates as one PEM text (what the SDK's TLS settings
/// take).
pub fn roots_pem() -> Result<Vec<u8>, Failure> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for cert in roots()?.iter() {
        let b64 = base64::prelude::BASE64_STANDARD.encode(cert.as_ref());
        out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_every_certificate() {
        let Ok(roots) = roots() else {
            panic!("this machine has no CA certificates; install ca-certificates")
        };
        let pem = roots_pem().unwrap();
        let back: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back.len(), roots.len());
        assert!(back.iter().zip(roots.iter()).all(|(a, b)| a == b));
    }

    #[test]
    fn a_bundle_must_hold_a_usable_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = ca_bundle(missing.to_str().unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("cannot read AWS_CA_BUNDLE"),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = ca_bundle(empty.to_str().unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("no usable CA certificate"),
            "{err}"
        );
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = ca_bundle(broken.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("not a valid PEM file"), "{err}");
    }
}
