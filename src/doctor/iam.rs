//! The `iam` check: whether the caller's IAM policies allow the calls a
//! connection makes, asked of IAM's policy simulator.
//!
//! Who the caller is comes from `sts:GetCallerIdentity`; an assumed-role
//! session maps to its role, whose ARN (with its path) `iam:GetRole` gives.
//! `iam:SimulatePrincipalPolicy` then evaluates
//! `ec2-instance-connect:SendSSHPublicKey` on the instance with the context
//! a real push carries (`ec2:osuser` and the instance's tags), and, through
//! an endpoint, `ec2-instance-connect:OpenTunnel` on the endpoint with the
//! tunnel's port, address and longest duration. Without the permission to
//! simulate (or to read the role), the check is skipped, never failed.

use std::net::IpAddr;

use aws_sdk_iam::types::{ContextEntry, ContextKeyTypeEnum, PolicyEvaluationDecisionType};

use crate::aws::Clients;
use crate::aws::ec2::InstanceInfo;
use crate::aws::errors::from_sdk;
use crate::error::{Failure, FailureKind, is_kind};
use crate::sanitize::terminal_safe;

use super::Route;
use super::checks::{Check, Status, failure_of};

const NAME: &str = "iam";

/// What an ARN names, as far as the simulation cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arn {
    pub partition: String,
    pub account: String,
    pub kind: Principal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An IAM user (or the account's root): simulated as it is.
    User,
    /// A session of this role: simulated as the role.
    AssumedRole(String),
    /// A federated user or anything else the simulator cannot take.
    Other,
}

/// Splits `arn:<partition>:<service>:<region>:<account>:<resource>`.
pub fn parse_arn(arn: &str) -> Option<Arn> {
    let mut parts = arn.splitn(6, ':');
    if parts.next()? != "arn" {
        return None;
    }
    let partition = parts.next()?.to_owned();
    let service = parts.next()?;
    let _region = parts.next()?;
    let account = parts.next()?.to_owned();
    let resource = parts.next()?;
    if partition.is_empty() || account.is_empty() {
        return None;
    }
    let kind = match service {
        "iam" if resource.starts_with("user/") || resource == "root" => Principal::User,
        "sts" => match resource.strip_prefix("assumed-role/") {
            Some(rest) => match rest.split_once('/') {
                Some((role, _session)) if !role.is_empty() => {
                    Principal::AssumedRole(role.to_owned())
                }
                _ => Principal::Other,
            },
            None => Principal::Other,
        },
        _ => Principal::Other,
    };
    Some(Arn {
        partition,
        account,
        kind,
    })
}

/// The caller, as the simulator takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The caller's ARN as STS says it.
    pub caller_arn: String,
    /// What the policies are attached to: the user, or the role behind an
    /// assumed-role session (with its path).
    pub principal_arn: String,
    pub account: String,
    pub partition: String,
}

/// Who the caller is, or why that is not known.
#[derive(Debug, Clone)]
pub enum Caller {
    Known(Identity),
    /// IAM refused a question the simulation needs: skip, saying which.
    CannotSimulate(String),
    Failed(Failure),
}

/// Asks STS who the caller is and, for an assumed role, IAM for the role's
/// ARN.
pub async fn whoami(clients: &Clients) -> Caller {
    let out = match clients.sts().get_caller_identity().send().await {
        Ok(out) => out,
        Err(e) => {
            let err = from_sdk(e, &clients.attempt("GetCallerIdentity", None));
            return if is_kind(&err, FailureKind::NotAuthorized) {
                Caller::CannotSimulate("missing sts:GetCallerIdentity".into())
            } else {
                Caller::Failed(failure_of(&err))
            };
        }
    };
    let caller_arn = out.arn().unwrap_or_default().to_owned();
    let Some(arn) = parse_arn(&caller_arn) else {
        return Caller::Failed(Failure::new(format!(
            "STS gave a caller ARN eic-connect cannot read: {:?}",
            terminal_safe(&caller_arn)
        )));
    };
    let principal_arn = match &arn.kind {
        Principal::User => caller_arn.clone(),
        Principal::Other => {
            return Caller::CannotSimulate(format!(
                "the simulator takes users and roles, not {}",
                terminal_safe(&caller_arn)
            ));
        }
        Principal::AssumedRole(role) => {
            match clients.iam().get_role().role_name(role).send().await {
                Ok(out) => match out.role() {
                    Some(r) => r.arn().to_owned(),
                    None => {
                        return Caller::Failed(Failure::new(format!(
                            "GetRole said nothing about role {}",
                            terminal_safe(role)
                        )));
                    }
                },
                Err(e) => {
                    let err = from_sdk(e, &clients.attempt("GetRole", None));
                    return if is_kind(&err, FailureKind::NotAuthorized) {
                        Caller::CannotSimulate(format!(
                            "missing iam:GetRole, which maps the assumed role {} to its ARN",
                            terminal_safe(role)
                        ))
                    } else {
                        Caller::Failed(failure_of(&err))
                    };
                }
            }
        }
    };
    Caller::Known(Identity {
        caller_arn,
        principal_arn,
        account: out.account().map_or(arn.account.clone(), str::to_owned),
        partition: arn.partition,
    })
}

/// The type of a simulation context value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    String,
    Numeric,
    Ip,
}

/// One question for the simulator: an action on a resource, with the
/// request context a real call would carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simulation {
    pub action: &'static str,
    pub resource: String,
    pub context: Vec<(String, KeyType, String)>,
    /// How the report names it.
    pub what: String,
}

/// What a connection would ask of IAM (pure): the push to the instance as
/// the OS user, and through an endpoint, its tunnel.
pub fn plan(
    identity: &Identity,
    region: &str,
    instance: &InstanceInfo,
    os_user: &str,
    route: Option<&Route>,
    port: u16,
    max_tunnel_duration: Option<u32>,
) -> Vec<Simulation> {
    let partition = &identity.partition;
    let account = &identity.account;
    let mut context = vec![("ec2:osuser".to_owned(), KeyType::String, os_user.to_owned())];
    for (key, value) in &instance.tags {
        context.push((
            format!("aws:ResourceTag/{key}"),
            KeyType::String,
            value.clone(),
        ));
        context.push((
            format!("ec2:ResourceTag/{key}"),
            KeyType::String,
            value.clone(),
        ));
    }
    let mut plan = vec![Simulation {
        action: "ec2-instance-connect:SendSSHPublicKey",
        resource: format!(
            "arn:{partition}:ec2:{region}:{account}:instance/{}",
            instance.id
        ),
        context,
        what: format!("SendSSHPublicKey to {} as {os_user}", instance.id),
    }];
    if let Some(Route::Endpoint(endpoint)) = route {
        let address = instance
            .addresses
            .private_ip
            .map(IpAddr::V4)
            .or_else(|| instance.addresses.ipv6.first().copied().map(IpAddr::V6));
        let mut context = vec![
            (
                "ec2-instance-connect:remotePort".to_owned(),
                KeyType::Numeric,
                port.to_string(),
            ),
            (
                "ec2-instance-connect:maxTunnelDuration".to_owned(),
                KeyType::Numeric,
                max_tunnel_duration.unwrap_or(3600).to_string(),
            ),
        ];
        if let Some(ip) = address {
            context.push((
                "ec2-instance-connect:privateIpAddress".to_owned(),
                KeyType::Ip,
                ip.to_string(),
            ));
        }
        plan.push(Simulation {
            action: "ec2-instance-connect:OpenTunnel",
            resource: format!(
                "arn:{partition}:ec2:{region}:{account}:instance-connect-endpoint/{}",
                endpoint.id
            ),
            context,
            what: format!("OpenTunnel through {} to port {port}", endpoint.id),
        });
    }
    plan
}

/// A statement the simulator matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub policy_id: String,
    pub policy_type: String,
    /// Line and column where the statement starts.
    pub at: Option<(i32, i32)>,
}

impl Matched {
    fn describe(&self) -> String {
        let mut s = if self.policy_id.is_empty() {
            "a policy".to_owned()
        } else {
            self.policy_id.clone()
        };
        let mut about = Vec::new();
        if !self.policy_type.is_empty() {
            about.push(self.policy_type.clone());
        }
        if let Some((line, column)) = self.at {
            about.push(format!("statement at line {line}, column {column}"));
        }
        if !about.is_empty() {
            s.push_str(&format!(" ({})", about.join(", ")));
        }
        s
    }
}

/// The simulator's answer for one action, reduced to plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `allowed`, `explicitDeny` or `implicitDeny`.
    pub decision: String,
    pub matched: Vec<Matched>,
    pub missing_context: Vec<String>,
}

/// One simulation's answer: the outcome, or why there is none.
#[derive(Debug, Clone)]
pub enum Answer {
    Outcome(Outcome),
    /// Not allowed to simulate.
    Denied,
    Failed(Failure),
}

/// Runs one simulation.
pub async fn simulate(clients: &Clients, identity: &Identity, sim: &Simulation) -> Answer {
    let mut call = clients
        .iam()
        .simulate_principal_policy()
        .policy_source_arn(&identity.principal_arn)
        .action_names(sim.action)
        .resource_arns(&sim.resource);
    for (key, kind, value) in &sim.context {
        let kind = match kind {
            KeyType::String => ContextKeyTypeEnum::String,
            KeyType::Numeric => ContextKeyTypeEnum::Numeric,
            KeyType::Ip => ContextKeyTypeEnum::Ip,
        };
        call = call.context_entries(
            ContextEntry::builder()
                .context_key_name(key)
                .context_key_type(kind)
                .context_key_values(value)
                .build(),
        );
    }
    let out = match call.send().await {
        Ok(out) => out,
        Err(e) => {
            let err = from_sdk(e, &clients.attempt("SimulatePrincipalPolicy", None));
            return if is_kind(&err, FailureKind::NotAuthorized) {
                Answer::Denied
            } else {
                Answer::Failed(failure_of(&err))
            };
        }
    };
    let result = out
        .evaluation_results()
        .iter()
        .find(|r| r.eval_action_name() == sim.action)
        .or_else(|| out.evaluation_results().first());
    let Some(result) = result else {
        return Answer::Failed(Failure::new(format!(
            "the simulator gave no result for {}",
            sim.action
        )));
    };
    let decision = match result.eval_decision() {
        PolicyEvaluationDecisionType::Allowed => "allowed".to_owned(),
        PolicyEvaluationDecisionType::ExplicitDeny => "explicitDeny".to_owned(),
        PolicyEvaluationDecisionType::ImplicitDeny => "implicitDeny".to_owned(),
        other => other.as_str().to_owned(),
    };
    Answer::Outcome(Outcome {
        decision,
        matched: result
            .matched_statements()
            .iter()
            .map(|s| Matched {
                policy_id: s.source_policy_id().unwrap_or_default().to_owned(),
                policy_type: s
                    .source_policy_type()
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_default(),
                at: s.start_position().map(|p| (p.line(), p.column())),
            })
            .collect(),
        missing_context: result.missing_context_values().to_vec(),
    })
}

/// The `iam` check from the caller and the simulations' answers (pure).
pub fn verdict(
    caller: &Caller,
    sims: &[Simulation],
    answers: &[Answer],
    instance_id: &str,
    os_user: &str,
) -> Check {
    let identity = match caller {
        Caller::Known(identity) => identity,
        Caller::CannotSimulate(why) => {
            return Check::new(NAME, Status::Skip, format!("cannot simulate ({why})"));
        }
        Caller::Failed(failure) => {
            let mut check = Check::from_failure(NAME, Status::Warn, failure);
            check.detail = format!("cannot tell who you are: {}", check.detail);
            return check;
        }
    };
    if answers.iter().any(|a| matches!(a, Answer::Denied)) {
        return Check::new(
            NAME,
            Status::Skip,
            "cannot simulate (missing iam:SimulatePrincipalPolicy)",
        );
    }
    let mut parts = Vec::new();
    let mut failed = false;
    let mut problem: Option<&Failure> = None;
    let mut denied_actions = Vec::new();
    for (sim, answer) in sims.iter().zip(answers) {
        let said = match answer {
            Answer::Outcome(o) => {
                let statements = || {
                    let list: Vec<String> = o.matched.iter().map(Matched::describe).collect();
                    if list.is_empty() {
                        "a policy".to_owned()
                    } else {
                        list.join(", ")
                    }
                };
                let mut said = match o.decision.as_str() {
                    "allowed" => format!("allowed by {}", statements()),
                    "explicitDeny" => {
                        failed = true;
                        denied_actions.push(sim.action);
                        format!("denied: explicit deny in {}", statements())
                    }
                    _ => {
                        failed = true;
                        denied_actions.push(sim.action);
                        "denied: no statement allows it (implicit deny)".to_owned()
                    }
                };
                if !o.missing_context.is_empty() {
                    said.push_str(&format!(
                        " (the simulation lacked context keys: {})",
                        o.missing_context.join(", ")
                    ));
                }
                said
            }
            Answer::Failed(failure) => {
                problem.get_or_insert(failure);
                format!("could not simulate: {}", failure.message)
            }
            Answer::Denied => unreachable!("handled above"),
        };
        parts.push(format!("{}: {said}", sim.what));
    }
    let detail = format!("as {}: {}", identity.principal_arn, parts.join("; "));
    if failed {
        let tunnel = sims
            .iter()
            .find(|s| s.action == "ec2-instance-connect:OpenTunnel")
            .filter(|s| denied_actions.contains(&s.action));
        let mut command = format!("eic-connect policy {instance_id} --os-user {os_user}");
        if let Some(endpoint) = tunnel.and_then(|t| t.resource.rsplit_once('/')) {
            command.push_str(&format!(" --endpoint {}", endpoint.1));
        }
        let mut fix = format!(
            "attach a policy allowing {} to {}; {command} prints one",
            denied_actions.join(" and "),
            identity.principal_arn
        );
        if let Some(tunnel) = tunnel {
            fix.push_str(&format!(" (OpenTunnel goes on {})", tunnel.resource));
        }
        return Check::new(NAME, Status::Fail, detail).fix(fix);
    }
    if let Some(failure) = problem {
        let fix = (!failure.hints.is_empty()).then(|| failure.hints.join("; "));
        let mut check = Check::new(NAME, Status::Warn, detail);
        check.fix = fix;
        return check;
    }
    Check::new(NAME, Status::Pass, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::diag::Endpoint;
    use crate::target::Addresses;

    #[test]
    fn arns_by_partition_and_kind() {
        let a = parse_arn("arn:aws:sts::111122223333:assumed-role/Admin/alice").unwrap();
        assert_eq!(a.partition, "aws");
        assert_eq!(a.account, "111122223333");
        assert_eq!(a.kind, Principal::AssumedRole("Admin".into()));
        let u = parse_arn("arn:aws-cn:iam::111122223333:user/ops/bob").unwrap();
        assert_eq!((u.partition.as_str(), u.kind), ("aws-cn", Principal::User));
        let g = parse_arn("arn:aws-us-gov:sts::111122223333:assumed-role/R/s").unwrap();
        assert_eq!(g.partition, "aws-us-gov");
        let f = parse_arn("arn:aws:sts::111122223333:federated-user/carol").unwrap();
        assert_eq!(f.kind, Principal::Other);
        assert_eq!(
            parse_arn("arn:aws:sts::1:assumed-role//s").unwrap().kind,
            Principal::Other
        );
        assert!(parse_arn("not-an-arn").is_none());
        assert!(parse_arn("arn:aws:iam:::user/x").is_none());
    }

    fn identity() -> Identity {
        Identity {
            caller_arn: "arn:aws:sts::111122223333:assumed-role/Ops/s".into(),
            principal_arn: "arn:aws:iam::111122223333:role/team/Ops".into(),
            account: "111122223333".into(),
            partition: "aws".into(),
        }
    }

    fn instance() -> InstanceInfo {
        InstanceInfo {
            id: "i-1".into(),
            state: "running".into(),
            addresses: Addresses {
                private_ip: Some("10.0.0.5".parse().unwrap()),
                ..Default::default()
            },
            tags: vec![("team".into(), "web".into())],
            ..Default::default()
        }
    }

    #[test]
    fn the_plan_carries_the_context_of_a_real_call() {
        let direct = plan(
            &identity(),
            "eu-west-1",
            &instance(),
            "ubuntu",
            None,
            22,
            None,
        );
        assert_eq!(direct.len(), 1);
        assert_eq!(
            direct[0].resource,
            "arn:aws:ec2:eu-west-1:111122223333:instance/i-1"
        );
        assert_eq!(
            direct[0].context,
            vec![
                ("ec2:osuser".into(), KeyType::String, "ubuntu".into()),
                ("aws:ResourceTag/team".into(), KeyType::String, "web".into()),
                ("ec2:ResourceTag/team".into(), KeyType::String, "web".into()),
            ]
        );
        let route = Route::Endpoint(Endpoint {
            id: "eice-1".into(),
            ..Default::default()
        });
        let tunnel = plan(
            &identity(),
            "eu-west-1",
            &instance(),
            "ubuntu",
            Some(&route),
            22,
            Some(600),
        );
        assert_eq!(tunnel.len(), 2);
        assert_eq!(
            tunnel[1].resource,
            "arn:aws:ec2:eu-west-1:111122223333:instance-connect-endpoint/eice-1"
        );
        assert!(tunnel[1].context.contains(&(
            "ec2-instance-connect:privateIpAddress".into(),
            KeyType::Ip,
            "10.0.0.5".into()
        )));
        assert!(tunnel[1].context.contains(&(
            "ec2-instance-connect:maxTunnelDuration".into(),
            KeyType::Numeric,
            "600".into()
        )));
    }

    #[test]
    fn verdicts() {
        let sims = plan(
            &identity(),
            "eu-west-1",
            &instance(),
            "ubuntu",
            None,
            22,
            None,
        );
        let outcome = |decision: &str, matched: Vec<Matched>| {
            vec![Answer::Outcome(Outcome {
                decision: decision.into(),
                matched,
                missing_context: Vec::new(),
            })]
        };
        let caller = Caller::Known(identity());
        let stmt = Matched {
            policy_id: "eic-users".into(),
            policy_type: "user".into(),
            at: Some((3, 5)),
        };
        let ok = verdict(
            &caller,
            &sims,
            &outcome("allowed", vec![stmt.clone()]),
            "i-1",
            "ubuntu",
        );
        assert_eq!(ok.status, Status::Pass);
        assert!(
            ok.detail
                .ends_with("allowed by eic-users (user, statement at line 3, column 5)"),
            "{}",
            ok.detail
        );
        let deny = verdict(
            &caller,
            &sims,
            &outcome("explicitDeny", vec![stmt]),
            "i-1",
            "ubuntu",
        );
        assert_eq!(deny.status, Status::Fail);
        assert!(deny.detail.contains("denied: explicit deny in eic-users"));
        assert!(
            deny.fix
                .unwrap()
                .contains("eic-connect policy i-1 --os-user ubuntu")
        );
        let none = verdict(
            &caller,
            &sims,
            &outcome("implicitDeny", vec![]),
            "i-1",
            "ubuntu",
        );
        assert!(
            none.detail
                .ends_with("no statement allows it (implicit deny)")
        );
        let skip = verdict(&caller, &sims, &[Answer::Denied], "i-1", "ubuntu");
        assert_eq!(skip.status, Status::Skip);
        assert_eq!(
            skip.detail,
            "cannot simulate (missing iam:SimulatePrincipalPolicy)"
        );
        let skip = verdict(
            &Caller::CannotSimulate("missing iam:GetRole".into()),
            &sims,
            &[],
            "i-1",
            "ubuntu",
        );
        assert_eq!(skip.status, Status::Skip);
    }
}
