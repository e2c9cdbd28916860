//! `eic-connect policy`: prints a least-privilege IAM policy for using
//! eic-connect (the document is made in [`crate::policy`]). Instance ids
//! and `--account` need no AWS call; Name tags and other targets are looked
//! up, and the account comes from `sts:GetCallerIdentity` when not given.

use std::process::ExitCode;

use crate::aws::errors::{Attempt, from_sdk};
use crate::aws::{self, Clients, ec2};
use crate::cli::PolicyArgs;
use crate::error::Failure;
use crate::policy::{self, Capability, Request, Tunnels};
use crate::settings::Admin;
use crate::target::{Target, parse_target, validate_user};

pub async fn run(settings: Admin<PolicyArgs>) -> anyhow::Result<ExitCode> {
    let args = settings.args;
    // Everything given is checked before any AWS call.
    let tags = args
        .tags
        .iter()
        .map(|t| policy::parse_tag(t))
        .collect::<Result<Vec<_>, Failure>>()?;
    for user in &args.os_users {
        validate_user(user)?;
    }
    let mut endpoints = Vec::new();
    let mut any_endpoint = false;
    for text in &args.endpoints {
        match policy::parse_endpoint_id(text)? {
            Some(id) => endpoints.push(id),
            None => any_endpoint = true,
        }
    }
    if any_endpoint {
        endpoints.clear();
    }
    if let Some(port) = args.tunnel_ports.iter().find(|p| **p == 0) {
        return Err(Failure::usage(format!("{port} is not a port")).into());
    }
    let targets = args
        .targets
        .iter()
        .map(|t| parse_target(t))
        .collect::<Result<Vec<_>, Failure>>()?;
    let account = args
        .account
        .as_deref()
        .map(policy::parse_account)
        .transpose()?;

    let mut capabilities = vec![Capability::Connect];
    for (on, capability) in [
        (!args.endpoints.is_empty(), Capability::Endpoint),
        (args.session_manager, Capability::SessionManager),
        (args.start, Capability::Start),
        (args.verify_host_key, Capability::VerifyHostKey),
        (args.serial, Capability::Serial),
        (args.audit, Capability::Audit),
        (args.doctor, Capability::Doctor),
    ] {
        if on {
            capabilities.push(capability);
        }
    }

    let lookups: Vec<&Target> = targets
        .iter()
        .filter(|t| !matches!(t, Target::InstanceId(_)))
        .collect();
    let mut region = None;
    let mut instances: Vec<String> = Vec::new();
    let mut account = account;
    if !args.all_regions || !lookups.is_empty() || account.is_none() {
        let config = aws::load_config(&settings.aws).await?;
        let clients = Clients::new(&config, &settings.aws);
        region = Some(clients.scope.region.clone());
        if account.is_none() {
            account = Some(caller_account(&clients).await?);
        }
        for target in &lookups {
            let found = ec2::find(&clients, target).await?;
            instances.push(ec2::exactly_one(found, target, &clients.scope)?.id);
        }
    }
    for target in &targets {
        if let Target::InstanceId(id) = target {
            instances.push(id.clone());
        }
    }
    instances.sort();
    instances.dedup();

    let request = Request {
        region: if args.all_regions { None } else { region },
        account: account.unwrap_or_else(|| "*".to_owned()),
        instances,
        tags,
        os_users: args.os_users,
        capabilities,
        tunnels: Tunnels {
            endpoints,
            ports: args.tunnel_ports,
            addresses: args.private_ips,
            max_duration: args.max_tunnel_duration,
        },
    };
    let document = request.document();
    let text = if args.compact {
        serde_json::to_string(&document)?
    } else {
        serde_json::to_string_pretty(&document)?
    };
    for note in request.notes() {
        eprintln!("eic-connect: note: {note}");
    }
    crate::error::print_stdout(&(text + "\n"))?;
    Ok(ExitCode::SUCCESS)
}

/// The caller's account, which every principal may ask for.
async fn caller_account(clients: &Clients) -> anyhow::Result<String> {
    let at = Attempt {
        op: "GetCallerIdentity",
        scope: &clients.scope,
        instance_id: None,
        os_user: None,
    };
    let identity = clients
        .sts()
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| from_sdk(e, &at))?;
    match identity.account() {
        Some(account) => Ok(policy::parse_account(account)
            .map_err(|_| Failure::new("sts:GetCallerIdentity gave no valid account id"))?),
        None => Err(Failure::new("sts:GetCallerIdentity gave no account id")
            .hint("pass --account ACCOUNT")
            .into()),
    }
}
