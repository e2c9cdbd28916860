//! Test certificate authorities: the API stand-in's for its HTTPS mode
//! (`BedOptions::https`), and the one whose certificates the endpoint and
//! Session Manager stream stand-ins present (`eice-ca.pem`); and the TLS
//! configurations built from them.
//!
//! Each bed makes its own CA (rcgen, ECDSA P-256) and one server
//! certificate for `127.0.0.1`, `::1` and `localhost`; the CA's PEM is
//! `api-ca.pem` in the bed dir. Nothing else trusts it: a client must be
//! given that file (`AWS_CA_BUNDLE`, `curl --cacert`, [`client_config`]).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A CA made for one bed.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub pem: String,
    der: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A fresh CA named `common_name`.
    pub fn new(common_name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A rustls server configuration with a certificate for `names` (DNS
    /// names or IP addresses) issued by this CA; the chain includes the CA.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        self.server_config_named(names, "eic-connect test bed API stand-in")
    }

    /// [`TestCa::server_config`] with the certificate's common name.
    pub fn server_config_named(
        &self,
        names: &[&str],
        common_name: &str,
    ) -> Arc<rustls::ServerConfig> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().expect("server key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("server certificate params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the server certificate");
        let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), self.der.clone()], key_der)
            .expect("server certificate and key");
        Arc::new(config)
    }
}

/// A rustls client configuration that trusts only the CA certificates in
/// `ca_pem` (for tests of the stand-in itself).
pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("add the CA to the roots");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// `name` as a TLS server name (a DNS name or an IP address).
pub fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).expect("a valid server name")
}
