//! The SDK's HTTP client, built only when a request needs it.
//!
//! The SDK's default client builds its TLS connector — and so reads the
//! whole system certificate store — when an SDK client is created, before
//! any request, even for a `--dry-run` or a plain-HTTP endpoint that never
//! uses TLS. This client makes no connector until the first request, picks
//! one by the request's scheme, and builds TLS trust from [`crate::trust`]
//! (the system's roots plus `AWS_CA_BUNDLE`, which the SDK alone would
//! ignore). Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, as in
//! the SDK's default client.

use std::sync::{Arc, OnceLock};

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_http_client::{Builder, ConnectorBuilder};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

use crate::error::Failure;

/// An HTTP client for the SDK whose connectors are made on first use.
#[derive(Debug, Clone, Default)]
pub struct LazyClient {
    clients: Arc<Clients>,
}

#[derive(Debug, Default)]
struct Clients {
    plain: OnceLock<SharedHttpClient>,
    tls: OnceLock<Result<SharedHttpClient, Failure>>,
}

impl Clients {
    fn plain(&self) -> SharedHttpClient {
        self.plain
            .get_or_init(|| hyper_client(TrustStore::empty()))
            .clone()
    }

    fn tls(&self) -> Result<SharedHttpClient, Failure> {
        self.tls
            .get_or_init(|| {
                let pem = crate::trust::roots_pem()?;
                Ok(hyper_client(TrustStore::empty().with_pem_certificate(pem)))
            })
            .clone()
    }
}

/// The SDK's hyper client with rustls (aws-lc), `trust` and the proxy
/// settings from the environment.
fn hyper_client(trust: TrustStore) -> SharedHttpClient {
    let context = TlsContext::builder().with_trust_store(trust).build();
    Builder::new().build_with_connector_fn(move |settings, components| {
        let mut builder = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ));
        if let Ok(context) = &context {
            builder = builder.tls_context(context.clone());
        }
        builder.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            builder.set_sleep_impl(components.sleep_impl());
        }
        builder.set_proxy_config(Some(ProxyConfig::from_env()));
        builder.build()
    })
}

impl HttpClient for LazyClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(ByScheme {
            clients: Arc::clone(&self.clients),
            settings: settings.clone(),
            components: components.clone(),
        })
    }
}

/// Sends each request with the client for its scheme, made on first use.
#[derive(Debug)]
struct ByScheme {
    clients: Arc<Clients>,
    settings: HttpConnectorSettings,
    components: RuntimeComponents,
}

impl HttpConnector for ByScheme {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = if request.uri().starts_with("http://") {
            self.clients.plain()
        } else {
            match self.clients.tls() {
                Ok(client) => client,
                Err(failure) => {
                    return HttpConnectorFuture::ready(Err(ConnectorError::user(Box::new(
                        failure,
                    ))));
                }
            }
        };
        client
            .http_connector(&self.settings, &self.components)
            .call(request)
    }
}

/// Whether API calls will use TLS: no endpoint override, or an `https://`
/// one. (A plain-HTTP override is for local stand-ins.)
pub fn endpoint_uses_tls() -> bool {
    let plain = |name: &str| {
        std::env::var(name)
            .map(|v| v.trim().to_ascii_lowercase().starts_with("http://"))
            .unwrap_or(false)
    };
    !(plain("AWS_ENDPOINT_URL")
        || (plain("AWS_ENDPOINT_URL_EC2") && plain("AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT")))
}
