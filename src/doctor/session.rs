//! The Session Manager checks: whether Session Manager manages the instance
//! and how its agent is (`session-manager`), and, when Session Manager is
//! the path, a real session started and ended at once (`session`).

use crate::aws::Clients;
use crate::aws::ec2::InstanceInfo;
use crate::error::{Failure, FailureKind, is_kind};
use crate::policy::partition;
use crate::ssm::api::{self, Managed, SSH_DOCUMENT};

use super::checks::{Check, Status, failure_of};

const AGENT: &str = "session-manager";
const SESSION: &str = "session";

/// What `DescribeInstanceInformation` said about the instance.
#[derive(Debug, Clone)]
pub enum Agent {
    /// Not asked: the instance is not running.
    NotAsked,
    Managed(Managed),
    NotManaged,
    /// The question failed; `denied` when IAM refused it.
    Unknown {
        failure: Failure,
        denied: bool,
    },
}

/// Asks Session Manager about a running instance.
pub async fn ask(clients: &Clients, instance: &InstanceInfo) -> Agent {
    if instance.state != "running" {
        return Agent::NotAsked;
    }
    match api::managed(clients, &instance.id).await {
        Ok(Some(managed)) => Agent::Managed(managed),
        Ok(None) => Agent::NotManaged,
        Err(err) => Agent::Unknown {
            denied: is_kind(&err, FailureKind::NotAuthorized),
            failure: failure_of(&err),
        },
    }
}

/// What an instance needs before Session Manager can reach it.
fn how_to_manage(instance_id: &str, region: &str) -> String {
    format!(
        "Session Manager needs the SSM agent running on the instance (preinstalled on Amazon Linux, Ubuntu and Windows AMIs), \
         an instance profile with the AmazonSSMManagedInstanceCore policy \
         (aws ec2 associate-iam-instance-profile --instance-id {instance_id} --iam-instance-profile Name=PROFILE), \
         and a way to the Systems Manager endpoints: the internet (a public IP or a NAT gateway) \
         or VPC endpoints com.amazonaws.{region}.ssm, com.amazonaws.{region}.ssmmessages and com.amazonaws.{region}.ec2messages"
    )
}

/// The agent's version and platform, as far as known.
fn agent_details(m: &Managed) -> String {
    let mut parts = Vec::new();
    if let Some(version) = &m.agent_version {
        parts.push(format!("agent {version}"));
    }
    if let Some(platform) = &m.platform {
        parts.push(platform.clone());
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// The `session-manager` check (pure): managed or not, and the agent's
/// status. What is wrong fails only when Session Manager is the path;
/// otherwise it is a note.
pub fn agent_check(agent: &Agent, on_path: bool, instance_id: &str, region: &str) -> Check {
    let off_path = if on_path { Status::Fail } else { Status::Note };
    match agent {
        Agent::NotAsked => Check::new(AGENT, Status::Skip, "the instance is not running"),
        Agent::Managed(m) if m.online() => Check::new(
            AGENT,
            Status::Pass,
            format!(
                "managed by Session Manager, its agent Online{}",
                agent_details(m)
            ),
        ),
        Agent::Managed(m) => {
            let status = if m.ping_status.is_empty() {
                "of unknown status"
            } else {
                m.ping_status.as_str()
            };
            let fix = if m.ping_status == "Inactive" {
                format!(
                    "the agent has not reached Systems Manager for a long time: start the instance, \
                     or start the agent (sudo systemctl start amazon-ssm-agent; \
                     snap.amazon-ssm-agent.amazon-ssm-agent on Ubuntu); {}",
                    how_to_manage(instance_id, region)
                )
            } else {
                format!(
                    "the agent stopped reaching Systems Manager: check that it runs \
                     (sudo systemctl status amazon-ssm-agent; snap.amazon-ssm-agent.amazon-ssm-agent on Ubuntu) \
                     and that the instance still reaches the ssm, ssmmessages and ec2messages endpoints \
                     (internet or VPC endpoints com.amazonaws.{region}.ssm, .ssmmessages, .ec2messages)"
                )
            };
            Check::new(
                AGENT,
                off_path,
                format!(
                    "managed by Session Manager, but its agent is {status}{}",
                    agent_details(m)
                ),
            )
            .fix(fix)
        }
        Agent::NotManaged => Check::new(
            AGENT,
            off_path,
            format!("{instance_id} is not managed by Session Manager (DescribeInstanceInformation does not list it)"),
        )
        .fix(how_to_manage(instance_id, region)),
        Agent::Unknown { denied: true, .. } => Check::new(
            AGENT,
            Status::Skip,
            "cannot tell whether Session Manager manages the instance: not authorized to call ssm:DescribeInstanceInformation",
        )
        .fix("to check it, your IAM identity needs ssm:DescribeInstanceInformation"),
        Agent::Unknown { failure, .. } => Check::from_failure(
            AGENT,
            if on_path { Status::Warn } else { Status::Note },
            failure,
        ),
    }
}

/// The `session` check: when Session Manager is the path, a real
/// `StartSession` (the SSH document, to the port), ended at once with
/// `TerminateSession`. It proves `ssm:StartSession` and that the agent
/// takes sessions; no data travels.
pub async fn session_check(
    clients: &Clients,
    instance: &InstanceInfo,
    port: u16,
    on_path: bool,
    agent: &Agent,
) -> Check {
    if instance.state != "running" {
        return Check::new(SESSION, Status::Skip, "the instance is not running");
    }
    if let Some(skip) = not_tried(on_path, agent) {
        return skip;
    }
    let region = &clients.scope.region;
    let started = match api::start(clients, &instance.id, port).await {
        Ok(started) => started,
        Err(err) => return start_failed(&failure_of(&err), region, &instance.id),
    };
    match api::terminate(clients, &started.session_id).await {
        Ok(()) => Check::new(
            SESSION,
            Status::Pass,
            format!(
                "StartSession opened session {} ({SSH_DOCUMENT} to port {port}), and TerminateSession ended it at once",
                started.session_id
            ),
        ),
        Err(err) => terminate_failed(&failure_of(&err), region, &started.session_id),
    }
}

/// Why no session is tried, if none is (pure).
fn not_tried(on_path: bool, agent: &Agent) -> Option<Check> {
    let skip = |detail: &str| Some(Check::new(SESSION, Status::Skip, detail));
    if !on_path {
        return skip("Session Manager is not the path: no session started");
    }
    match agent {
        Agent::NotManaged => {
            skip("not tried: Session Manager does not manage the instance (see session-manager)")
        }
        Agent::Managed(m) if !m.online() => Some(Check::new(
            SESSION,
            Status::Skip,
            format!(
                "not tried: the agent is {} (see session-manager)",
                m.ping_status
            ),
        )),
        _ => None,
    }
}

/// A refused `StartSession` (pure): the failure, with the permission
/// spelled out when IAM refused it.
fn start_failed(failure: &Failure, region: &str, instance_id: &str) -> Check {
    let mut check = Check::from_failure(SESSION, Status::Fail, failure);
    if failure.kind == FailureKind::NotAuthorized {
        let p = partition(region);
        check.fix = Some(format!(
            "your IAM identity needs ssm:StartSession on the instance (arn:{p}:ec2:{region}:ACCOUNT:instance/{instance_id}) \
             and on the document (arn:{p}:ssm:{region}::document/{SSH_DOCUMENT}); \
             check which identity is in use: aws sts get-caller-identity"
        ));
    } else {
        // This is doctor: a hint to run it is no help here.
        let hints: Vec<&str> = failure
            .hints
            .iter()
            .map(String::as_str)
            .filter(|h| !h.contains("eic-connect doctor"))
            .collect();
        check.fix = (!hints.is_empty()).then(|| hints.join("; "));
    }
    check
}

/// A refused `TerminateSession` (pure): a warning, since connecting works,
/// but every session then lingers.
fn terminate_failed(failure: &Failure, region: &str, session_id: &str) -> Check {
    let lingers = format!(
        "until then each session lingers until Session Manager's idle timeout (20 minutes by default); \
         end this one with: aws ssm terminate-session --session-id {session_id}"
    );
    let fix = if failure.kind == FailureKind::NotAuthorized {
        format!(
            "your IAM identity needs ssm:TerminateSession on its own sessions (arn:{}:ssm:{region}:ACCOUNT:session/${{aws:userid}}-*); {lingers}",
            partition(region)
        )
    } else {
        let mut hints = failure.hints.clone();
        hints.push(lingers);
        hints.join("; ")
    };
    Check::new(
        SESSION,
        Status::Warn,
        format!(
            "StartSession opened session {session_id}, but TerminateSession failed: {}",
            failure.message
        ),
    )
    .fix(fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed(ping: &str) -> Agent {
        Agent::Managed(Managed {
            ping_status: ping.into(),
            agent_version: Some("3.3.1142.0".into()),
            platform: Some("Amazon Linux".into()),
        })
    }

    fn denied(op: &str) -> Failure {
        Failure::new(format!("not authorized to call {op} (region us-east-1)"))
            .hint(format!("your IAM identity needs ssm:{op}"))
            .kind(FailureKind::NotAuthorized)
    }

    const ID: &str = "i-0123456789abcdef0";

    #[test]
    fn an_online_agent_passes_on_any_path() {
        for on_path in [true, false] {
            let c = agent_check(&managed("Online"), on_path, ID, "us-east-1");
            assert_eq!(c.status, Status::Pass);
            assert_eq!(
                c.detail,
                "managed by Session Manager, its agent Online (agent 3.3.1142.0, Amazon Linux)"
            );
            assert_eq!(c.fix, None);
        }
    }

    #[test]
    fn a_lost_agent_fails_only_on_the_path() {
        let on = agent_check(&managed("ConnectionLost"), true, ID, "eu-west-1");
        assert_eq!(on.status, Status::Fail);
        assert!(on.detail.contains("its agent is ConnectionLost"), "{on:?}");
        assert!(on.fix.unwrap().contains("com.amazonaws.eu-west-1.ssm"));
        let off = agent_check(&managed("ConnectionLost"), false, ID, "eu-west-1");
        assert_eq!(off.status, Status::Note);
        let inactive = agent_check(&managed("Inactive"), true, ID, "eu-west-1");
        assert_eq!(inactive.status, Status::Fail);
        assert!(
            inactive
                .fix
                .unwrap()
                .starts_with("the agent has not reached")
        );
    }

    #[test]
    fn not_managed_gives_the_fix() {
        let c = agent_check(&Agent::NotManaged, true, ID, "us-east-1");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.starts_with(ID), "{}", c.detail);
        let fix = c.fix.unwrap();
        for needed in [
            "SSM agent",
            "AmazonSSMManagedInstanceCore",
            "--instance-id i-0123456789abcdef0",
            "com.amazonaws.us-east-1.ssmmessages",
            "com.amazonaws.us-east-1.ec2messages",
        ] {
            assert!(fix.contains(needed), "{needed}: {fix}");
        }
        assert_eq!(
            agent_check(&Agent::NotManaged, false, ID, "us-east-1").status,
            Status::Note
        );
    }

    #[test]
    fn a_denied_lookup_is_a_skip_naming_the_permission() {
        for on_path in [true, false] {
            let agent = Agent::Unknown {
                failure: denied("DescribeInstanceInformation"),
                denied: true,
            };
            let c = agent_check(&agent, on_path, ID, "us-east-1");
            assert_eq!(c.status, Status::Skip);
            assert!(c.detail.contains("ssm:DescribeInstanceInformation"));
            assert!(c.fix.unwrap().contains("ssm:DescribeInstanceInformation"));
        }
        let broken = Agent::Unknown {
            failure: Failure::new("Session Manager had an internal error").hint("try again"),
            denied: false,
        };
        assert_eq!(agent_check(&broken, true, ID, "r").status, Status::Warn);
        assert_eq!(agent_check(&broken, false, ID, "r").status, Status::Note);
        assert_eq!(
            agent_check(&Agent::NotAsked, true, ID, "r").status,
            Status::Skip
        );
    }

    #[test]
    fn sessions_are_tried_only_on_the_path_with_an_agent_that_may_answer() {
        assert!(not_tried(false, &managed("Online")).is_some());
        assert!(not_tried(true, &managed("Online")).is_none());
        let unknown = Agent::Unknown {
            failure: denied("DescribeInstanceInformation"),
            denied: true,
        };
        assert!(
            not_tried(true, &unknown).is_none(),
            "an unknown agent is tried"
        );
        let lost = not_tried(true, &managed("ConnectionLost")).unwrap();
        assert_eq!(lost.status, Status::Skip);
        assert!(lost.detail.contains("ConnectionLost"));
        assert!(not_tried(true, &Agent::NotManaged).is_some());
    }

    #[test]
    fn a_denied_start_names_both_resources() {
        let c = start_failed(&denied("StartSession"), "cn-north-1", ID);
        assert_eq!(c.status, Status::Fail);
        let fix = c.fix.unwrap();
        assert!(
            fix.contains("arn:aws-cn:ec2:cn-north-1:ACCOUNT:instance/i-0123456789abcdef0"),
            "{fix}"
        );
        assert!(
            fix.contains("arn:aws-cn:ssm:cn-north-1::document/AWS-StartSSHSession"),
            "{fix}"
        );
        let not_connected = Failure::new("Session Manager cannot reach i-1")
            .hint("the instance needs a running SSM agent")
            .hint("check it with: eic-connect doctor TARGET; or connect another way");
        let c = start_failed(&not_connected, "us-east-1", ID);
        assert_eq!(c.fix.unwrap(), "the instance needs a running SSM agent");
    }

    #[test]
    fn a_failed_terminate_is_a_warning() {
        let c = terminate_failed(&denied("TerminateSession"), "us-east-1", "me-0abc");
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.detail.starts_with(
                "StartSession opened session me-0abc, but TerminateSession failed: not authorized"
            ),
            "{}",
            c.detail
        );
        let fix = c.fix.unwrap();
        assert!(
            fix.contains("ssm:TerminateSession on its own sessions (arn:aws:ssm:us-east-1:ACCOUNT:session/${aws:userid}-*)"),
            "{fix}"
        );
        assert!(fix.contains("idle timeout"), "{fix}");
        assert!(fix.ends_with("aws ssm terminate-session --session-id me-0abc"));
    }
}
