//! Which calls the bed saw a policy document allows: each call with the
//! resource and condition keys AWS authorises it by (the instance and its
//! tags, the OS user, the tunnel's port, address and duration, the session
//! document), judged by the IAM model of [`super::iam`].

use std::collections::BTreeMap;

use serde_json::Value;

use super::TestBed;
use super::api::Service;
use super::iam::{Applies, Context, Effect, Stmt};

/// One authorisation AWS makes: an action on a resource, with its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub action: String,
    pub resource: String,
    pub context: BTreeMap<String, String>,
}

impl Authorization {
    /// The same request with one context key changed (or added).
    pub fn with(&self, key: &str, value: &str) -> Authorization {
        let mut other = self.clone();
        other.context.insert(key.to_owned(), value.to_owned());
        other
    }
}

/// Whether `policy` allows the authorisation: some statement allows it and
/// none denies it. `vars` fills `${aws:username}` and the like; a resource
/// naming a variable the request has no value for matches nothing, as in
/// IAM.
pub fn allows(policy: &Value, auth: &Authorization, vars: &BTreeMap<&str, &str>) -> bool {
    let context: Context = auth
        .context
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), (String::new(), vec![v.clone()])))
        .collect();
    let mut allowed = false;
    for mut stmt in Stmt::parse_document(policy) {
        stmt.resources = stmt
            .resources
            .iter()
            .filter_map(|r| substitute(r, vars))
            .collect();
        if stmt.applies(&auth.action, &auth.resource, &context) == Applies::Yes {
            match stmt.effect {
                Effect::Allow => allowed = true,
                Effect::Deny => return false,
            }
        }
    }
    allowed
}

/// The pattern with its variables filled in; `None` when one has no value.
fn substitute(pattern: &str, vars: &BTreeMap<&str, &str>) -> Option<String> {
    let mut out = pattern.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    (!out.contains("${")).then_some(out)
}

impl TestBed {
    fn arn(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:aws:{service}:{}:{}:{resource}",
            self.region(),
            self.account_id()
        )
    }

    fn instance_authorization(&self, action: &str, id: &str, tag_prefix: &str) -> Authorization {
        let tags = self
            .api
            .lock()
            .instances
            .iter()
            .find(|i| i.id == id)
            .map(|i| i.tags.clone())
            .unwrap_or_default();
        Authorization {
            action: action.to_owned(),
            resource: self.arn("ec2", &format!("instance/{id}")),
            context: tags
                .into_iter()
                .map(|(k, v)| (format!("{tag_prefix}/{k}"), v))
                .collect(),
        }
    }

    /// The authorisations AWS would have made for every call the bed saw
    /// (and every tunnel it opened or refused).
    pub fn authorizations(&self) -> Vec<Authorization> {
        let mut out = Vec::new();
        for call in self.requests() {
            let p = |k: &str| call.params.get(k).cloned().unwrap_or_default();
            let action = call.action.as_str();
            let auth = match (call.service, action) {
                (Service::InstanceConnect, "SendSSHPublicKey") => {
                    let mut auth = self.instance_authorization(
                        "ec2-instance-connect:SendSSHPublicKey",
                        &p("InstanceId"),
                        "aws:ResourceTag",
                    );
                    auth.context
                        .insert("ec2:osuser".into(), p("InstanceOSUser"));
                    auth
                }
                (Service::InstanceConnect, "SendSerialConsoleSSHPublicKey") => self
                    .instance_authorization(
                        "ec2-instance-connect:SendSerialConsoleSSHPublicKey",
                        &p("InstanceId"),
                        "aws:ResourceTag",
                    ),
                (Service::Ec2, "GetConsoleOutput") => self.instance_authorization(
                    "ec2:GetConsoleOutput",
                    &p("InstanceId"),
                    "aws:ResourceTag",
                ),
                (Service::Ec2, "StartInstances") => {
                    for id in call.list("InstanceId") {
                        out.push(self.instance_authorization(
                            "ec2:StartInstances",
                            &id,
                            "aws:ResourceTag",
                        ));
                    }
                    continue;
                }
                (Service::Ssm, "StartSession") => {
                    out.push(self.instance_authorization(
                        "ssm:StartSession",
                        &p("Target"),
                        "ssm:resourceTag",
                    ));
                    Authorization {
                        action: "ssm:StartSession".into(),
                        resource: format!(
                            "arn:aws:ssm:{}::document/{}",
                            self.region(),
                            p("DocumentName")
                        ),
                        context: BTreeMap::new(),
                    }
                }
                // IAM's resources are global: no region.
                (Service::Iam, "GetRole") => Authorization {
                    action: "iam:GetRole".into(),
                    resource: format!("arn:aws:iam::{}:role/{}", self.account_id(), p("RoleName")),
                    context: BTreeMap::new(),
                },
                (Service::Iam, "SimulatePrincipalPolicy") => Authorization {
                    action: "iam:SimulatePrincipalPolicy".into(),
                    resource: p("PolicySourceArn"),
                    context: BTreeMap::new(),
                },
                (Service::Ssm, "TerminateSession") => Authorization {
                    action: "ssm:TerminateSession".into(),
                    resource: self.arn("ssm", &format!("session/{}", p("SessionId"))),
                    context: BTreeMap::new(),
                },
                (service, _) => {
                    let prefix = match service {
                        Service::Ec2 => "ec2",
                        Service::InstanceConnect => "ec2-instance-connect",
                        Service::Ssm => "ssm",
                        Service::CloudTrail => "cloudtrail",
                        Service::Iam => "iam",
                        Service::Sts => "sts",
                    };
                    // Lookups that AWS does not scope by resource.
                    Authorization {
                        action: format!("{prefix}:{action}"),
                        resource: "*".into(),
                        context: BTreeMap::new(),
                    }
                }
            };
            out.push(auth);
        }
        for tunnel in self.tunnels() {
            let mut context = BTreeMap::from([
                (
                    "ec2-instance-connect:remotePort".to_owned(),
                    tunnel.remote_port.to_string(),
                ),
                (
                    "ec2-instance-connect:privateIpAddress".to_owned(),
                    tunnel.private_ip.clone(),
                ),
            ]);
            if let Some(max) = tunnel.max_duration {
                context.insert(
                    "ec2-instance-connect:maxTunnelDuration".to_owned(),
                    max.to_string(),
                );
            }
            out.push(Authorization {
                action: "ec2-instance-connect:OpenTunnel".into(),
                resource: self.arn(
                    "ec2",
                    &format!("instance-connect-endpoint/{}", tunnel.endpoint_id),
                ),
                context,
            });
        }
        out
    }
}
