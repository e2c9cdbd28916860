//! `eic-connect console TARGET`: the AWS console's browser-based EC2
//! Instance Connect page for an instance, after checking what that client
//! needs (protocols.md §9): the instance runs, has a public IPv4 address,
//! and a security group admits port 22 from the EC2 Instance Connect
//! range of the region (the managed prefix list
//! `com.amazonaws.<region>.ec2-instance-connect`, blocks covering all of
//! its addresses, or any address).
//!
//! The URL goes to standard output; `--open` hands it to the desktop's
//! opener (`xdg-open`, `open` on macOS) as one argument, without a shell.

use std::process::ExitCode;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::aws::diag::{self, SecurityGroup};
use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::{self, Clients};
use crate::cli::ConsoleArgs;
use crate::dirs::{self, ProcessEnv};
use crate::doctor::rules::Openings;
use crate::error::{Failure, fail};
use crate::osuser;
use crate::sanitize::terminal_safe;
use crate::settings::{Admin, choose_os_user};
use crate::target::parse_target;

/// The SSH port the browser client connects to.
const PORT: u16 = 22;

pub async fn run(settings: Admin<ConsoleArgs>) -> anyhow::Result<ExitCode> {
    let args = &settings.args;
    let target = parse_target(&args.target)?;
    let given = choose_os_user(None, args.os_user.clone(), None, None, &settings.defaults)?;
    let config = aws::load_config(&settings.aws).await?;
    let clients = Clients::new(&config, &settings.aws);
    let instance = ec2::exactly_one(ec2::find(&clients, &target).await?, &target, &clients.scope)?;
    ec2::ensure_running(&instance)?;
    let region = &clients.scope.region;
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail(Failure::usage(format!(
            "{:?} is not a region name that can be part of a console URL",
            terminal_safe(region)
        )));
    }

    let problem = match prerequisites(&clients, &instance).await? {
        None => None,
        Some(failure) if args.force => {
            eprintln!(
                "eic-connect: warning: {} (--force: printing the URL anyway)",
                failure.message
            );
            None
        }
        Some(failure) => Some(failure),
    };
    if let Some(failure) = problem {
        return fail(failure);
    }

    let user = if given.source.is_given() {
        given.name
    } else if let Some(user) = osuser::remembered(&dirs::state_dir(&ProcessEnv), &instance.id) {
        user
    } else {
        osuser::choose_for_image(&clients, instance.image_id.as_deref())
            .await
            .user
    };
    let url = console_url(region, &instance.id, &user, PORT);
    crate::error::print_stdout(&format!("{url}\n"))?;
    if args.open {
        open(&url);
    }
    Ok(ExitCode::SUCCESS)
}

/// Why the browser client cannot reach the instance, with the fix; `None`
/// when it can.
async fn prerequisites(
    clients: &Clients,
    instance: &InstanceInfo,
) -> anyhow::Result<Option<Failure>> {
    let id = &instance.id;
    if instance.addresses.public_ip.is_none() {
        return Ok(Some(
            Failure::new(format!(
                "instance {id} has no public IPv4 address: the console's browser-based client cannot reach it"
            ))
            .hint(format!(
                "connect with `eic-connect {id}` instead: it reaches private instances through an EC2 Instance Connect Endpoint or Session Manager"
            ))
            .hint("no endpoint in its VPC yet? create one with: eic-connect endpoint create ".to_owned() + id),
        ));
    }
    let groups = diag::security_groups(clients, &instance.security_group_ids).await?;
    let prefix_list = diag::console_prefix_list(clients).await?;
    let problem = port_problem(&groups, prefix_list.as_deref(), &clients.scope.region, id);
    // Blocks that cover every address of the prefix list admit the console too.
    let open = Openings::of(&groups, PORT);
    if let (Some(failure), Some(pl)) = (&problem, &prefix_list)
        && !open.cidrs.is_empty()
    {
        match prefix_list_entries(clients, pl).await {
            Ok(entries) if covers_all(&open.cidrs, &entries) => return Ok(None),
            Ok(_) => {}
            Err(err) => {
                let why = crate::error::render(&err);
                let why = why.lines().next().unwrap_or_default().to_owned();
                return Ok(Some(failure.clone().hint(format!(
                    "the prefix list's addresses could not be read to compare with those blocks ({why})"
                ))));
            }
        }
    }
    Ok(problem)
}

/// The address blocks of a managed prefix list (GetManagedPrefixListEntries).
async fn prefix_list_entries(clients: &Clients, id: &str) -> anyhow::Result<Vec<String>> {
    let mut pages = clients
        .ec2
        .get_managed_prefix_list_entries()
        .prefix_list_id(id)
        .into_paginator()
        .send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            crate::aws::errors::from_sdk(
                e,
                &crate::aws::errors::Attempt {
                    op: "GetManagedPrefixListEntries",
                    scope: &clients.scope,
                    instance_id: None,
                    os_user: None,
                },
            )
        })?;
        out.extend(
            page.entries()
                .iter()
                .filter_map(|e| e.cidr().map(str::to_owned)),
        );
    }
    Ok(out)
}

/// Whether every one of `entries` lies inside one of `open` (pure; blocks
/// that do not parse cover nothing, and no entries is not "covered").
fn covers_all(open: &[String], entries: &[String]) -> bool {
    let open: Vec<ipnet::IpNet> = open.iter().filter_map(|c| c.parse().ok()).collect();
    !entries.is_empty()
        && entries.iter().all(|e| {
            e.parse::<ipnet::IpNet>()
                .is_ok_and(|e| open.iter().any(|o| o.contains(&e)))
        })
}

/// Whether the groups admit port 22 from the console's range (pure).
fn port_problem(
    groups: &[SecurityGroup],
    prefix_list: Option<&str>,
    region: &str,
    instance_id: &str,
) -> Option<Failure> {
    let open = Openings::of(groups, PORT);
    if open.open_to_any_address() || prefix_list.is_some_and(|pl| open.admits_prefix_list(pl)) {
        return None;
    }
    let ids: Vec<String> = groups
        .iter()
        .map(|g| terminal_safe(&g.id).into_owned())
        .collect();
    let group = ids.first().map_or("<security group id>", String::as_str);
    let list_name = format!("com.amazonaws.{region}.ec2-instance-connect");
    let opened = if open.is_empty() {
        "to nothing".to_owned()
    } else {
        let mut to: Vec<String> = open
            .cidrs
            .iter()
            .map(|c| terminal_safe(c).into_owned())
            .collect();
        to.extend(
            open.groups
                .iter()
                .map(|g| format!("group {}", terminal_safe(g))),
        );
        to.extend(
            open.prefix_lists
                .iter()
                .map(|p| format!("prefix list {}", terminal_safe(p))),
        );
        format!("only to {}", to.join(", "))
    };
    let mut failure = Failure::new(format!(
        "instance {instance_id}'s security groups ({}) open port {PORT} {opened}, not to the EC2 Instance Connect range of {region}: the browser-based client cannot connect",
        if ids.is_empty() {
            "none".to_owned()
        } else {
            ids.join(", ")
        }
    ));
    failure = match prefix_list.map(terminal_safe) {
        Some(pl) => failure.hint(format!(
            "admit the AWS-managed prefix list {list_name}: aws ec2 authorize-security-group-ingress --group-id {group} --ip-permissions 'IpProtocol=tcp,FromPort={PORT},ToPort={PORT},PrefixListIds=[{{PrefixListId={pl}}}]'"
        )),
        None => failure.hint(format!(
            "admit the EC2_INSTANCE_CONNECT range of {region} from https://ip-ranges.amazonaws.com/ip-ranges.json: aws ec2 authorize-security-group-ingress --group-id {group} --protocol tcp --port {PORT} --cidr <range>"
        )),
    };
    if !open.cidrs.is_empty() && prefix_list.is_none() {
        failure = failure.hint(
            "if one of those blocks covers the region's EC2 Instance Connect range, print the URL anyway with --force",
        );
    }
    Some(failure.hint(format!(
        "or connect from here with `eic-connect {instance_id}`, which needs no console rule"
    )))
}

/// Characters left as they are in a query value (RFC 3986 unreserved).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The console's host for a region's partition.
fn console_host(region: &str) -> String {
    if region.starts_with("cn-") {
        "console.amazonaws.cn".to_owned()
    } else if region.starts_with("us-gov-") {
        "console.amazonaws-us-gov.com".to_owned()
    } else {
        format!("{region}.console.aws.amazon.com")
    }
}

/// The console's EC2 Instance Connect page for an instance and OS user.
pub fn console_url(region: &str, instance_id: &str, user: &str, port: u16) -> String {
    let enc = |s: &str| utf8_percent_encode(s, QUERY_VALUE).to_string();
    format!(
        "https://{}/ec2-instance-connect/ssh?region={}&connType=standard&instanceId={}&osUser={}&sshPort={port}",
        console_host(region),
        enc(region),
        enc(instance_id),
        enc(user),
    )
}

/// The desktop's URL opener for this platform.
fn opener() -> &'static str {
    if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    }
}

/// Opens the URL with the desktop's opener (never through a shell); says
/// so when there is none.
fn open(url: &str) {
    let program = opener();
    match std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .status()
    {
        Ok(status) if status.success() => {
            eprintln!("eic-connect: opened the console page in the browser ({program})");
        }
        Ok(status) => {
            eprintln!("eic-connect: {program} failed ({status}): open the URL above yourself")
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => eprintln!(
            "eic-connect: no {program} on PATH to open a browser: open the URL above yourself"
        ),
        Err(err) => {
            eprintln!("eic-connect: could not run {program} ({err}): open the URL above yourself")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::diag::InboundRule;

    #[test]
    fn urls_per_partition_with_encoded_values() {
        assert_eq!(
            console_url("eu-west-1", "i-0123456789abcdef0", "ec2-user", 22),
            "https://eu-west-1.console.aws.amazon.com/ec2-instance-connect/ssh?region=eu-west-1&connType=standard&instanceId=i-0123456789abcdef0&osUser=ec2-user&sshPort=22"
        );
        assert!(
            console_url("cn-north-1", "i-1", "u", 22).starts_with("https://console.amazonaws.cn/")
        );
        assert!(
            console_url("us-gov-west-1", "i-1", "u", 22)
                .starts_with("https://console.amazonaws-us-gov.com/")
        );
        let odd = console_url("us-east-1", "i-1", "a&b=c d#", 22);
        assert!(odd.contains("osUser=a%26b%3Dc%20d%23&sshPort=22"), "{odd}");
    }

    fn group(rule: InboundRule) -> Vec<SecurityGroup> {
        vec![SecurityGroup {
            id: "sg-1".into(),
            name: "web".into(),
            inbound: vec![rule],
        }]
    }

    fn tcp22() -> InboundRule {
        InboundRule {
            protocol: "tcp".into(),
            from_port: Some(22),
            to_port: Some(22),
            ..Default::default()
        }
    }

    #[test]
    fn blocks_must_cover_every_entry() {
        let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert!(covers_all(
            &s(&["18.206.0.0/16"]),
            &s(&["18.206.107.24/29"])
        ));
        assert!(covers_all(
            &s(&["18.206.107.24/29", "3.0.5.32/29"]),
            &s(&["18.206.107.24/29", "3.0.5.32/29"])
        ));
        assert!(!covers_all(
            &s(&["18.206.107.24/30"]),
            &s(&["18.206.107.24/29"])
        ));
        assert!(!covers_all(
            &s(&["18.206.0.0/16"]),
            &s(&["18.206.107.24/29", "3.0.5.32/29"])
        ));
        assert!(!covers_all(&s(&["0.0.0.0/0"]), &[]));
        assert!(!covers_all(&s(&["junk"]), &s(&["18.206.107.24/29"])));
    }

    #[test]
    fn the_console_range_must_be_let_in() {
        let pl = Some("pl-1");
        let with_pl = group(InboundRule {
            prefix_list_ids: vec!["pl-1".into()],
            ..tcp22()
        });
        assert!(port_problem(&with_pl, pl, "us-east-1", "i-1").is_none());
        let world = group(InboundRule {
            cidrs: vec!["0.0.0.0/0".into()],
            ..tcp22()
        });
        assert!(port_problem(&world, pl, "us-east-1", "i-1").is_none());
        let office = group(InboundRule {
            cidrs: vec!["203.0.113.0/24".into()],
            ..tcp22()
        });
        let f = port_problem(&office, pl, "us-east-1", "i-1").expect("refused");
        assert!(
            f.message.contains("only to 203.0.113.0/24"),
            "{}",
            f.message
        );
        assert!(
            f.hints
                .iter()
                .any(|h| h.contains("PrefixListIds=[{PrefixListId=pl-1}]")
                    && h.contains("--group-id sg-1")),
            "{:?}",
            f.hints
        );
        let rdp_only = group(InboundRule {
            from_port: Some(3389),
            to_port: Some(3389),
            prefix_list_ids: vec!["pl-1".into()],
            ..tcp22()
        });
        assert!(port_problem(&rdp_only, pl, "us-east-1", "i-1").is_some());
    }
}
