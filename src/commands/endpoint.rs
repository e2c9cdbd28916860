//! `eic-connect endpoint list|create|delete`: the region's EC2 Instance
//! Connect Endpoints, and making or removing one.
//!
//! `create` checks before it changes anything: the VPC has no endpoint yet
//! (AWS allows one per VPC by default), the endpoint's security groups let
//! SSH out to the instance, and someone said yes (a terminal prompt, or
//! `--yes`). It then waits for `create-complete` and says which inbound
//! rule the instance needs. Messages go to standard error; the endpoint's
//! id is the one line on standard output.

use std::io::{BufRead, IsTerminal, Write};
use std::net::IpAddr;
use std::process::ExitCode;

use crate::aws::ec2::{self, InstanceInfo};
use crate::aws::{self, Clients};
use crate::cli::{
    EndpointAction, EndpointArgs, EndpointCreateArgs, EndpointDeleteArgs, EndpointListArgs,
};
use crate::doctor::rules::Openings;
use crate::eice::admin::{self, CreateRequest, EndpointInfo, Group};
use crate::error::{Failure, FailureKind, fail};
use crate::progress;
use crate::sanitize::terminal_safe;
use crate::settings::Admin;
use crate::target::parse_target;

pub async fn run(settings: Admin<EndpointArgs>) -> anyhow::Result<ExitCode> {
    let config = aws::load_config(&settings.aws).await?;
    let clients = Clients::new(&config, &settings.aws);
    match &settings.args.action {
        EndpointAction::List(args) => list(&clients, args).await,
        EndpointAction::Create(args) => create(&clients, args).await,
        EndpointAction::Delete(args) => delete(&clients, args).await,
    }
}

fn say(text: &str) {
    eprintln!("eic-connect: {text}");
}

// ------------------------------------------------------------------ list

const HEADER: [&str; 9] = [
    "ID",
    "STATE",
    "VPC",
    "SUBNET",
    "SECURITY GROUPS",
    "PRESERVE CLIENT IP",
    "IP TYPE",
    "CREATED",
    "NAME",
];

/// Widest a name is shown in the table.
const NAME_WIDTH: usize = 30;

fn row(e: &EndpointInfo) -> Vec<String> {
    let e = e.sanitized();
    let cell = |s: Option<String>| s.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into());
    vec![
        e.id,
        e.state,
        cell(e.vpc_id),
        cell(e.subnet_id),
        cell(Some(e.security_group_ids.join(","))),
        cell(
            e.preserve_client_ip
                .map(|b| if b { "yes" } else { "no" }.to_owned()),
        ),
        e.ip_address_type,
        cell(e.created_at),
        cell(e.name),
    ]
}

/// The JSON form: stable field names, sanitised values.
pub fn endpoint_json(e: &EndpointInfo) -> serde_json::Value {
    let e = e.sanitized();
    serde_json::json!({
        "id": e.id,
        "state": e.state,
        "state_message": e.state_message,
        "vpc_id": e.vpc_id,
        "subnet_id": e.subnet_id,
        "availability_zone": e.availability_zone,
        "security_group_ids": e.security_group_ids,
        "preserve_client_ip": e.preserve_client_ip,
        "ip_address_type": e.ip_address_type,
        "created_at": e.created_at,
        "dns_name": e.dns_name,
        "name": e.name,
    })
}

async fn list(clients: &Clients, args: &EndpointListArgs) -> anyhow::Result<ExitCode> {
    let found = admin::list(clients, args.vpc.as_deref()).await?;
    let text = if args.json {
        let all: Vec<serde_json::Value> = found.iter().map(endpoint_json).collect();
        crate::fleet::json_text(&serde_json::Value::Array(all)) + "\n"
    } else {
        let rows: Vec<Vec<String>> = found.iter().map(row).collect();
        if std::io::stdout().is_terminal() {
            if rows.is_empty() {
                say(&format!(
                    "no EC2 Instance Connect Endpoints ({}); create one with: eic-connect endpoint create TARGET",
                    clients.scope.describe()
                ));
                String::new()
            } else {
                crate::table::render(&HEADER, &rows, Some((8, NAME_WIDTH)))
            }
        } else {
            rows.iter().map(|r| r.join("\t") + "\n").collect()
        }
    };
    crate::error::print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------ confirming

/// Goes on only if the user says yes: `--yes`, or "y" at a terminal
/// prompt. Without a terminal and without `--yes`, refuses. `action` is
/// what will be done ("create the endpoint").
fn confirm(action: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return fail(
            Failure::usage(format!(
                "will not {action} without confirmation: standard input is not a terminal, so nobody could be asked"
            ))
            .hint("nothing was changed; run the same command with --yes to go ahead without a prompt"),
        );
    }
    eprint!("eic-connect: {action}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        fail(Failure::new(format!(
            "did not {action}: nothing was changed"
        )))
    }
}

// ---------------------------------------------------------------- create

/// Where the endpoint goes, and the instance it is for (if one was named).
struct Placement {
    subnet_id: String,
    vpc_id: String,
    instance: Option<InstanceInfo>,
}

async fn placement(clients: &Clients, args: &EndpointCreateArgs) -> anyhow::Result<Placement> {
    if let Some(subnet) = &args.subnet {
        let vpc_id = admin::subnet_vpc(clients, subnet).await?;
        return Ok(Placement {
            subnet_id: subnet.clone(),
            vpc_id: terminal_safe(&vpc_id).into_owned(),
            instance: None,
        });
    }
    let Some(target) = &args.target else {
        return fail(Failure::usage(
            "name an instance (TARGET) or a subnet (--subnet)",
        ));
    };
    let target = parse_target(target)?;
    let instance = ec2::exactly_one(ec2::find(clients, &target).await?, &target, &clients.scope)?;
    let (Some(subnet_id), Some(vpc_id)) = (instance.subnet_id.clone(), instance.vpc_id.clone())
    else {
        return fail(
            Failure::new(format!(
                "instance {} is not in a VPC subnet, so no EC2 Instance Connect Endpoint can reach it",
                instance.id
            ))
            .hint("connect directly with --connect direct"),
        );
    };
    // These ids reach messages and commands to paste: terminal-safe (a real
    // id is unchanged by it).
    let safe = |s: &str| terminal_safe(s).into_owned();
    let mut instance = instance;
    instance.security_group_ids = instance
        .security_group_ids
        .iter()
        .map(|g| safe(g))
        .collect();
    Ok(Placement {
        subnet_id: safe(&subnet_id),
        vpc_id: safe(&vpc_id),
        instance: Some(instance),
    })
}

/// Endpoints that still count against the VPC (all but deleted ones).
fn live(endpoints: Vec<EndpointInfo>) -> Vec<EndpointInfo> {
    endpoints
        .into_iter()
        .filter(|e| e.state != "delete-complete")
        .collect()
}

/// The instance's addresses an endpoint of this type reaches.
fn reachable_address(instance: &InstanceInfo, ip_type: &str) -> Option<IpAddr> {
    let v4 = instance.addresses.private_ip.map(IpAddr::V4);
    let v6 = instance.addresses.ipv6.first().copied().map(IpAddr::V6);
    match ip_type {
        "ipv6" => v6,
        "dualstack" => v4.or(v6),
        _ => v4,
    }
}

/// Checks the endpoint's groups let `port` out to the instance; the fix
/// when they do not.
fn egress_problem(
    groups: &[Group],
    instance: &InstanceInfo,
    ip_type: &str,
    port: u16,
) -> Option<Failure> {
    let ip = reachable_address(instance, ip_type);
    let outbound: Vec<_> = groups.iter().flat_map(|g| g.outbound.clone()).collect();
    if admin::admits(&outbound, port, ip, &instance.security_group_ids).is_some() {
        return None;
    }
    let eice_sg = groups
        .first()
        .map_or("<endpoint security group>", |g| g.id.as_str());
    let ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
    let to = match (ip, instance.security_group_ids.first()) {
        (Some(ip), Some(sg)) => format!("{ip} or its security group {sg}"),
        (Some(ip), None) => ip.to_string(),
        (None, Some(sg)) => format!("its security group {sg}"),
        (None, None) => "it".to_owned(),
    };
    let mut failure = Failure::new(format!(
        "the endpoint's security group {} does not allow outbound TCP {port} to instance {} ({to})",
        ids.join(", "),
        instance.id
    ));
    if let Some(sg) = instance.security_group_ids.first() {
        failure = failure.hint(format!(
            "add the rule, then run this again: aws ec2 authorize-security-group-egress --group-id {eice_sg} --ip-permissions 'IpProtocol=tcp,FromPort={port},ToPort={port},UserIdGroupPairs=[{{GroupId={sg}}}]'"
        ));
    } else if let Some(ip) = ip {
        let cidr = ipnet::IpNet::from(ip);
        failure = failure.hint(format!(
            "add the rule, then run this again: aws ec2 authorize-security-group-egress --group-id {eice_sg} --ip-permissions 'IpProtocol=tcp,FromPort={port},ToPort={port},IpRanges=[{{CidrIp={cidr}}}]'"
        ));
    }
    Some(failure.hint("or choose other groups with --security-group SG; nothing was created"))
}

/// What in the instance's groups lets `port` in from the endpoint, if anything.
fn ingress_from(
    instance_groups: &[Group],
    port: u16,
    endpoint_groups: &[String],
) -> Option<String> {
    let as_diag: Vec<crate::aws::diag::SecurityGroup> = instance_groups
        .iter()
        .map(|g| crate::aws::diag::SecurityGroup {
            id: g.id.clone(),
            name: g.name.clone(),
            inbound: g.inbound.clone(),
        })
        .collect();
    let open = Openings::of(&as_diag, port);
    if let Some(g) = open.group_among(endpoint_groups) {
        return Some(format!("from the endpoint's security group {g}"));
    }
    if open.open_to_any_address() {
        return Some("from any address".to_owned());
    }
    // A block covering the endpoint's subnet would do too, but its address
    // is not known here: only the sure cases count.
    None
}

async fn create(clients: &Clients, args: &EndpointCreateArgs) -> anyhow::Result<ExitCode> {
    let place = placement(clients, args).await?;
    let vpc = &place.vpc_id;
    let subnet = &place.subnet_id;

    // One per VPC by default: name the one there instead of a raw AWS error.
    let existing = live(admin::list(clients, Some(vpc)).await?);
    if let Some(e) = existing.first() {
        let e = e.sanitized();
        let mut failure = Failure::new(format!(
            "{vpc} already has an EC2 Instance Connect Endpoint: {} ({}, subnet {})",
            e.id,
            e.state,
            e.subnet_id.as_deref().unwrap_or("-")
        ))
        .hint(
            "AWS allows one endpoint per VPC by default, and one reaches every subnet of its VPC",
        );
        if let Some(i) = &place.instance {
            failure = failure.hint(format!(
                "eic-connect {} already connects through it when the instance has no public address",
                i.id
            ));
        }
        return fail(failure.hint(format!(
            "to replace it: eic-connect endpoint delete {}",
            e.id
        )));
    }

    // The endpoint's security groups: those given, else the VPC's default.
    let groups = if args.security_groups.is_empty() {
        match admin::default_group(clients, vpc).await? {
            Some(g) => {
                say(&format!(
                    "no --security-group given: using the VPC's default security group {} ({})",
                    terminal_safe(&g.id),
                    terminal_safe(&g.name)
                ));
                vec![g]
            }
            None => {
                return fail(
                    Failure::new(format!("{vpc} has no default security group"))
                        .hint("name the endpoint's group with --security-group SG"),
                );
            }
        }
    } else {
        let found = admin::groups(clients, &args.security_groups).await?;
        if let Some(other) = found
            .iter()
            .find(|g| g.vpc_id.as_deref().is_some_and(|v| v != vpc))
        {
            return fail(
                Failure::usage(format!(
                    "security group {} is in {}, not in the endpoint's VPC {vpc}",
                    other.id,
                    terminal_safe(other.vpc_id.as_deref().unwrap_or("-"))
                ))
                .hint("an endpoint's security groups must be in its VPC"),
            );
        }
        found
    };
    let group_ids: Vec<String> = groups.iter().map(|g| g.id.clone()).collect();
    let ip_type = args.ip_address_type.map_or("ipv4", |t| t.as_str());

    // The endpoint must be able to reach the instance's SSH (and RDP) port.
    let ports: &[u16] = if args.rdp { &[22, 3389] } else { &[22] };
    match &place.instance {
        Some(instance) => {
            for &port in ports {
                if let Some(failure) = egress_problem(&groups, instance, ip_type, port) {
                    return fail(failure);
                }
            }
        }
        None => say("no instance named: the endpoint's outbound rules are not checked against one"),
    }

    // Say what will be made, and ask.
    let mut plan = format!(
        "will create an EC2 Instance Connect Endpoint in subnet {subnet} of {vpc}\n  security groups: {}\n  preserve client IP: {}\n  IP address type: {ip_type}",
        group_ids.join(", "),
        if args.preserve_client_ip { "yes" } else { "no" },
    );
    if let Some(i) = &place.instance {
        plan.push_str(&format!("\n  for instance: {}", i.summary()));
    }
    say(&plan);
    confirm("create the endpoint", args.yes)?;

    let request = CreateRequest {
        subnet_id: subnet.clone(),
        // As given, in the order given; none: AWS takes the VPC's default.
        security_group_ids: args.security_groups.clone(),
        preserve_client_ip: args.preserve_client_ip,
        ip_address_type: args.ip_address_type.map(|t| t.as_str().to_owned()),
        client_token: admin::client_token(),
    };
    let created = admin::create(clients, &request).await.map_err(|err| {
        add_hint_if_denied(
            err,
            "creating an endpoint also needs ec2:CreateNetworkInterface and ec2:CreateTags, and on first use in the account iam:CreateServiceLinkedRole",
        )
    })?;
    let id = terminal_safe(&created.id).into_owned();
    let sgs = if created.security_group_ids.is_empty() {
        group_ids.clone()
    } else {
        created.sanitized().security_group_ids
    };

    if args.no_wait {
        say(&format!(
            "creating {id} ({}): not waiting; it usually takes a few minutes (check with: eic-connect endpoint list --vpc {vpc})",
            terminal_safe(&created.state)
        ));
    } else {
        let mut line = progress::Line::stderr();
        line.show(&format!(
            "creating {id}: {} (this usually takes a few minutes)",
            terminal_safe(&created.state)
        ));
        let last = admin::wait(
            clients,
            &created.id,
            "create-in-progress",
            &mut line,
            "creating",
        )
        .await?;
        match last {
            Some(e) if e.state == "create-complete" => {
                line.finish(&format!("created {id}: create-complete"));
            }
            Some(e) => {
                line.clear();
                let message = e
                    .state_message
                    .as_deref()
                    .map(|m| format!(": {}", terminal_safe(m)))
                    .unwrap_or_default();
                return fail(
                    Failure::new(format!(
                        "EC2 Instance Connect Endpoint {id} ended {}{message}",
                        terminal_safe(&e.state)
                    ))
                    .hint(format!(
                        "a failed endpoint still counts against the VPC: delete it with `eic-connect endpoint delete {id}` before trying again"
                    )),
                );
            }
            None => {
                line.clear();
                return fail(
                    Failure::new(format!(
                        "EC2 Instance Connect Endpoint {id} disappeared while being created"
                    ))
                    .hint("list the endpoints with: eic-connect endpoint list"),
                );
            }
        }
    }

    say(
        "cost: EC2 Instance Connect Endpoints have no hourly or data-processing charge; data transfer is charged as usual",
    );
    if let Some(instance) = &place.instance {
        advise_ingress(clients, instance, &sgs, ports).await;
    } else {
        say(&format!(
            "instances need inbound TCP 22 from the endpoint's security group: aws ec2 authorize-security-group-ingress --group-id <instance sg> --protocol tcp --port 22 --source-group {}",
            sgs.first().map_or("<endpoint sg>", String::as_str)
        ));
    }
    crate::error::print_stdout(&format!("{id}\n"))?;
    Ok(ExitCode::SUCCESS)
}

/// Says whether the instance's groups admit the endpoint, and the command
/// that adds the rule when not.
async fn advise_ingress(
    clients: &Clients,
    instance: &InstanceInfo,
    endpoint_sgs: &[String],
    ports: &[u16],
) {
    let eice_sg = endpoint_sgs.first().map_or("<endpoint sg>", String::as_str);
    let instance_sg = instance
        .security_group_ids
        .first()
        .map_or("<instance sg>", String::as_str);
    let groups = match admin::groups(clients, &instance.security_group_ids).await {
        Ok(g) => Some(g),
        Err(err) => {
            say(&format!(
                "warning: could not check the instance's security groups: {}",
                crate::error::render(&err)
                    .lines()
                    .next()
                    .unwrap_or_default()
            ));
            None
        }
    };
    for &port in ports {
        let command = format!(
            "aws ec2 authorize-security-group-ingress --group-id {instance_sg} --protocol tcp --port {port} --source-group {eice_sg}"
        );
        match groups
            .as_deref()
            .and_then(|g| ingress_from(g, port, endpoint_sgs))
        {
            Some(how) => say(&format!(
                "instance {} already admits TCP {port} {how}",
                instance.id
            )),
            None => say(&format!(
                "instance {} needs inbound TCP {port} from the endpoint's security group; add it with:\n  {command}",
                instance.id
            )),
        }
    }
    say(&format!(
        "`eic-connect {}` now uses the endpoint by itself when the instance has no public address (or with --connect eice)",
        instance.id
    ));
}

/// Adds a hint to a "not authorized" failure.
fn add_hint_if_denied(err: anyhow::Error, hint: &str) -> anyhow::Error {
    match err.downcast::<Failure>() {
        Ok(failure) if failure.kind == FailureKind::NotAuthorized => failure.hint(hint).into(),
        Ok(failure) => failure.into(),
        Err(err) => err,
    }
}

// ---------------------------------------------------------------- delete

async fn delete(clients: &Clients, args: &EndpointDeleteArgs) -> anyhow::Result<ExitCode> {
    let id = &args.id;
    let Some(found) = admin::describe(clients, id).await? else {
        return fail(
            Failure::new(format!(
                "no EC2 Instance Connect Endpoint {id} ({})",
                clients.scope.describe()
            ))
            .hint("list them with: eic-connect endpoint list (check --region and --profile)"),
        );
    };
    let e = found.sanitized();
    if e.state == "delete-complete" {
        say(&format!("{id} is already deleted"));
        return Ok(ExitCode::SUCCESS);
    }
    say(&format!(
        "will delete EC2 Instance Connect Endpoint {id} ({}) in {}, subnet {}: connections through it stop working",
        e.state,
        e.vpc_id.as_deref().unwrap_or("-"),
        e.subnet_id.as_deref().unwrap_or("-")
    ));
    confirm(&format!("delete {id}"), args.yes)?;
    admin::delete(clients, id).await?;
    if args.no_wait {
        say(&format!(
            "deleting {id}: not waiting (check with: eic-connect endpoint list)"
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let mut line = progress::Line::stderr();
    line.show(&format!("deleting {id}: delete-in-progress"));
    match admin::wait(clients, id, "delete-in-progress", &mut line, "deleting").await? {
        None => line.finish(&format!("deleted {id}")),
        Some(e) if e.state == "delete-complete" => {
            line.finish(&format!("deleted {id}: delete-complete"))
        }
        Some(e) => {
            line.clear();
            let message = e
                .state_message
                .as_deref()
                .map(|m| format!(": {}", terminal_safe(m)))
                .unwrap_or_default();
            return fail(
                Failure::new(format!(
                    "deleting {id} ended {}{message}",
                    terminal_safe(&e.state)
                ))
                .hint(
                    "try again shortly; if it keeps failing, check the endpoint in the VPC console",
                ),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_json_are_sanitised() {
        let e = EndpointInfo {
            id: "eice-0123456789abcdef0".into(),
            state: "create-complete".into(),
            name: Some("evil\x1b[2Jname".into()),
            security_group_ids: vec!["sg-1".into(), "sg-2".into()],
            preserve_client_ip: Some(false),
            ip_address_type: "ipv4".into(),
            ..Default::default()
        };
        let r = row(&e);
        assert!(r.iter().all(|c| !c.contains('\x1b')), "{r:?}");
        assert_eq!(r[4], "sg-1,sg-2");
        assert_eq!(r[5], "no");
        let j = endpoint_json(&e).to_string();
        assert!(!j.contains("\\u001b"), "{j}");
    }
}
