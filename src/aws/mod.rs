//! Everything that talks to AWS: the SDK configuration (built in one place),
//! instance lookups, the key push, and what each AWS error means to a user.

pub mod diag;
pub mod ec2;
pub mod errors;
pub mod http;
pub mod push;

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_types::timeout::TimeoutConfig;

use crate::error::{Failure, fail};

/// `--api-timeout`'s default, in seconds.
pub const DEFAULT_API_TIMEOUT: f64 = 10.0;
/// The longest `--api-timeout`, in seconds.
pub const MAX_API_TIMEOUT: f64 = 3600.0;

/// AWS settings from the command line (and their environment variables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub profile: Option<String>,
    /// Limit for one attempt of one API call.
    pub attempt_timeout: Duration,
}

/// Where an API call went, for messages: region and profile as resolved.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub region: String,
    pub profile: Option<String>,
}

impl Scope {
    /// `region us-east-1, profile dev` (the profile only when one is set).
    pub fn describe(&self) -> String {
        match &self.profile {
            Some(p) => format!(
                "region {}, profile {}",
                self.region,
                crate::sanitize::terminal_safe(p)
            ),
            None => format!("region {}", self.region),
        }
    }
}

/// SDK clients for one region and identity.
#[derive(Debug, Clone)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub eic: aws_sdk_ec2instanceconnect::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub scope: Scope,
    /// For the clients only some commands need, made on first use.
    pub config: SdkConfig,
}

impl Clients {
    /// CloudTrail (`audit`).
    pub fn cloudtrail(&self) -> aws_sdk_cloudtrail::Client {
        aws_sdk_cloudtrail::Client::new(&self.config)
    }

    /// IAM (`doctor`'s permission check).
    pub fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.config)
    }

    /// What a call is, for its error message: `op` on `instance_id`.
    pub fn attempt<'a>(
        &'a self,
        op: &'static str,
        instance_id: Option<&'a str>,
    ) -> errors::Attempt<'a> {
        errors::Attempt {
            op,
            scope: &self.scope,
            instance_id,
            os_user: None,
        }
    }

    /// STS (who the caller is).
    pub fn sts(&self) -> aws_sdk_sts::Client {
        aws_sdk_sts::Client::new(&self.config)
    }
}

/// Resolves region and credentials the standard way (environment, shared
/// config and credentials files, SSO, IMDS), with `--profile` and
/// `--region` taking precedence. Makes no API call: credentials are fetched
/// lazily by the first request.
pub async fn load_config(settings: &AwsSettings) -> anyhow::Result<SdkConfig> {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3).min(settings.attempt_timeout))
        .operation_attempt_timeout(settings.attempt_timeout)
        .operation_timeout(settings.attempt_timeout * 3)
        .build();
    // The HTTP client (and TLS trust with it) is made on the first request.
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .http_client(http::LazyClient::default());
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let config = loader.load().await;
    if config.region().is_none() {
        let mut failure = Failure::new("no AWS region is configured")
            .hint("pass --region REGION, or set AWS_REGION");
        failure = match &settings.profile {
            Some(p) => failure.hint(format!(
                "or add `region = …` to profile {p} in ~/.aws/config"
            )),
            None => failure.hint("or add `region = …` to ~/.aws/config"),
        };
        return fail(failure);
    }
    Ok(config)
}

impl Clients {
    pub fn new(config: &SdkConfig, settings: &AwsSettings) -> Clients {
        let ec2 = aws_sdk_ec2::Client::new(config);
        let eic_config = aws_sdk_ec2instanceconnect::config::Builder::from(config)
            .retry_classifier(push::retry_classifier())
            .build();
        let eic = aws_sdk_ec2instanceconnect::Client::from_conf(eic_config);
        if http::endpoint_uses_tls() {
            // Calls will follow: the trust store loads meanwhile.
            crate::trust::prefetch();
        }
        Clients {
            ec2,
            eic,
            ssm: aws_sdk_ssm::Client::new(config),
            scope: Scope::of(config, settings),
            config: config.clone(),
        }
    }
}

impl Scope {
    fn of(config: &SdkConfig, settings: &AwsSettings) -> Scope {
        Scope {
            region: config.region().map(|r| r.to_string()).unwrap_or_default(),
            profile: settings
                .profile
                .clone()
                .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty())),
        }
    }
}

/// Fewest attempts per call for fleets (`run`): a hundred pushes at once
/// meet the API's rate limits, and waiting beats failing.
const FLEET_MIN_ATTEMPTS: u32 = 10;
/// Longest one call may take, retries included, in fleets.
const FLEET_OPERATION_TIMEOUT: Duration = Duration::from_secs(180);

impl Clients {
    /// Clients for many calls at once: at least [`FLEET_MIN_ATTEMPTS`]
    /// attempts per call, with short, fully jittered backoffs (100 ms
    /// doubling up to 2 s). Throttled calls then spread over the API's
    /// refill instead of queueing behind long waits: against a stand-in
    /// allowing 25 pushes a second, 100 instances took 17-20 s this way and
    /// 26-31 s with the SDK's adaptive mode, whose client-side rate limiter
    /// backs off far below the allowed rate.
    pub fn for_fleet(config: &SdkConfig, settings: &AwsSettings) -> Clients {
        use aws_smithy_types::retry::RetryConfig;
        let attempts = config
            .retry_config()
            .map_or(3, RetryConfig::max_attempts)
            .max(FLEET_MIN_ATTEMPTS);
        let retry = RetryConfig::standard()
            .with_max_attempts(attempts)
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(2));
        // Retries count towards a call's time: allow for them (each attempt
        // keeps its own limit).
        let timeouts = config
            .timeout_config()
            .map(|t| t.to_builder())
            .unwrap_or_default()
            .operation_timeout(FLEET_OPERATION_TIMEOUT)
            .build();
        let config = config
            .to_builder()
            .retry_config(retry)
            .timeout_config(timeouts)
            .build();
        Clients::new(&config, settings)
    }
}

/// Resolves the region that would be used, for `--dry-run`, without building
/// clients.
pub async fn scope_for_dry_run(settings: &AwsSettings) -> anyhow::Result<Scope> {
    let config = load_config(settings).await?;
    Ok(Scope::of(&config, settings))
}
