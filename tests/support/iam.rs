//! IAM and STS stand-ins: the Query protocol with XML answers.
//!
//! STS `GetCallerIdentity` answers with the bed's caller: an IAM user, or
//! a session of an assumed role (with a role path). IAM `GetRole` knows
//! that role. `SimulatePrincipalPolicy` really evaluates a small policy
//! model held by the bed: statements with an effect, action and resource
//! wildcards, and conditions (`StringEquals`, `StringLike`,
//! `NumericLessThanEquals`, `NumericEquals`, `IpAddress`) on the context
//! entries the request carries; an explicit deny wins over an allow, and
//! nothing matching is an implicit deny. Condition keys a matching
//! statement uses but the request lacks are reported as
//! `MissingContextValues`.
//!
//! Defaults: the caller is the IAM user `eic-test` and one policy,
//! `eic-test-default`, allows `ec2-instance-connect:*` on `*`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::TestBed;
use super::api::{Api, Service, State, xml_escape};
use super::http::Response;

/// IAM's API version (Query protocol).
pub const IAM_VERSION: &str = "2010-05-08";
/// STS's API version (Query protocol).
pub const STS_VERSION: &str = "2011-06-15";

const IAM_XMLNS: &str = "https://iam.amazonaws.com/doc/2010-05-08/";
const STS_XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// HTTP status IAM and STS answer an error code with.
pub fn status(code: &str) -> u16 {
    match code {
        "NoSuchEntity" => 404,
        "AccessDenied" => 403,
        "ServiceFailure" => 500,
        _ => 400,
    }
}

/// An `ErrorResponse` document, as IAM and STS send it.
pub fn error_response(service: Service, status: u16, code: &str, msg: &str) -> Response {
    let xmlns = if service == Service::Sts {
        STS_XMLNS
    } else {
        IAM_XMLNS
    };
    let kind = if status >= 500 { "Receiver" } else { "Sender" };
    let body = format!(
        "<ErrorResponse xmlns=\"{xmlns}\"><Error><Type>{kind}</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
        xml_escape(code),
        xml_escape(msg),
        super::api::uuid_like()
    );
    Response::new(status, "text/xml", body.into_bytes())
}

/// Who calls, as STS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerSpec {
    User {
        name: String,
        path: String,
    },
    AssumedRole {
        role: String,
        path: String,
        session: String,
    },
}

/// `Allow` or `Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// One condition: `operator` on `key` against any of `values`.
#[derive(Debug, Clone)]
pub struct Condition {
    pub operator: String,
    pub key: String,
    pub values: Vec<String>,
}

/// One policy statement.
#[derive(Debug, Clone)]
pub struct Stmt {
    pub sid: String,
    pub effect: Effect,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    pub conditions: Vec<Condition>,
}

impl Stmt {
    pub fn allow(actions: &[&str], resources: &[&str]) -> Stmt {
        Stmt::new(Effect::Allow, actions, resources)
    }
    pub fn deny(actions: &[&str], resources: &[&str]) -> Stmt {
        Stmt::new(Effect::Deny, actions, resources)
    }
    fn new(effect: Effect, actions: &[&str], resources: &[&str]) -> Stmt {
        Stmt {
            sid: String::new(),
            effect,
            actions: actions.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            conditions: Vec::new(),
        }
    }
    pub fn sid(mut self, sid: &str) -> Stmt {
        self.sid = sid.into();
        self
    }
    /// Adds a condition, e.g. `.when("StringEquals", "ec2:osuser", &["ec2-user"])`.
    pub fn when(mut self, operator: &str, key: &str, values: &[&str]) -> Stmt {
        self.conditions.push(Condition {
            operator: operator.into(),
            key: key.into(),
            values: values.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    fn to_json(&self) -> serde_json::Value {
        let mut conditions = serde_json::Map::new();
        for c in &self.conditions {
            let entry = conditions
                .entry(c.operator.clone())
                .or_insert_with(|| serde_json::json!({}));
            entry[&c.key] = serde_json::json!(c.values);
        }
        let mut v = serde_json::json!({
            "Effect": if self.effect == Effect::Allow { "Allow" } else { "Deny" },
            "Action": self.actions,
            "Resource": self.resources,
        });
        if !self.sid.is_empty() {
            v["Sid"] = serde_json::json!(self.sid);
        }
        if !conditions.is_empty() {
            v["Condition"] = serde_json::Value::Object(conditions);
        }
        v
    }
}

/// A managed policy attached to the caller.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub statements: Vec<Stmt>,
}

impl Policy {
    /// Where each statement starts in the policy document as IAM shows it
    /// (pretty JSON): 1-based line and column.
    fn positions(&self) -> Vec<(usize, usize)> {
        // {                       line 1
        //   "Version": …,          line 2
        //   "Statement": [         line 3
        //     { first statement    line 4, column 5
        let mut line = 4;
        self.statements
            .iter()
            .map(|s| {
                let at = (line, 5);
                let text = serde_json::to_string_pretty(&s.to_json()).unwrap_or_default();
                line += text.lines().count();
                at
            })
            .collect()
    }
}

/// What these handlers know.
#[derive(Debug, Clone)]
pub struct IamState {
    pub caller: CallerSpec,
    pub policies: Vec<Policy>,
}

impl Default for IamState {
    fn default() -> Self {
        IamState {
            caller: CallerSpec::User {
                name: "eic-test".into(),
                path: "/".into(),
            },
            policies: vec![Policy {
                name: "eic-test-default".into(),
                statements: vec![Stmt::allow(&["ec2-instance-connect:*"], &["*"])],
            }],
        }
    }
}

fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

impl IamState {
    /// The caller's ARN as STS reports it.
    fn caller_arn(&self, partition: &str, account: &str) -> String {
        match &self.caller {
            CallerSpec::User { name, path } => {
                format!("arn:{partition}:iam::{account}:user{path}{name}")
            }
            CallerSpec::AssumedRole { role, session, .. } => {
                format!("arn:{partition}:sts::{account}:assumed-role/{role}/{session}")
            }
        }
    }

    /// The ARN the policies are attached to (user, or role with its path).
    fn principal_arn(&self, partition: &str, account: &str) -> String {
        match &self.caller {
            CallerSpec::User { .. } => self.caller_arn(partition, account),
            CallerSpec::AssumedRole { role, path, .. } => {
                format!("arn:{partition}:iam::{account}:role{path}{role}")
            }
        }
    }
}

type ApiError = (u16, String, String);

fn err(status: u16, code: &str, msg: impl Into<String>) -> ApiError {
    (status, code.to_owned(), msg.into())
}

fn el(out: &mut String, name: &str, text: &str) {
    out.push_str(&format!("<{name}>{}</{name}>", xml_escape(text)));
}

fn answer(action: &str, xmlns: &str, result: &str) -> Response {
    let body = format!(
        "<{action}Response xmlns=\"{xmlns}\"><{action}Result>{result}</{action}Result><ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{action}Response>",
        super::api::uuid_like()
    );
    Response::new(200, "text/xml", body.into_bytes())
}

/// `Prefix.member.N` values in index order.
fn members(params: &BTreeMap<String, String>, prefix: &str) -> Vec<String> {
    let mut v: Vec<(usize, String)> = params
        .iter()
        .filter_map(|(k, val)| {
            let n = k
                .strip_prefix(prefix)?
                .strip_prefix(".member.")?
                .parse()
                .ok()?;
            Some((n, val.clone()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, s)| s).collect()
}

pub fn handle(
    api: &Api,
    st: &mut State,
    service: Service,
    action: &str,
    params: &BTreeMap<String, String>,
) -> Result<Response, (u16, String, String)> {
    let account = api.config.account_id.clone();
    let part = partition(&api.config.region);
    let iam = &st.diag.iam;
    match (service, action) {
        (Service::Sts, "GetCallerIdentity") => {
            let mut r = String::new();
            el(&mut r, "Arn", &iam.caller_arn(part, &account));
            let user_id = match &iam.caller {
                CallerSpec::User { .. } => "AIDAEICTESTUSER00001".to_owned(),
                CallerSpec::AssumedRole { session, .. } => {
                    format!("AROAEICTESTROLE00001:{session}")
                }
            };
            el(&mut r, "UserId", &user_id);
            el(&mut r, "Account", &account);
            Ok(answer("GetCallerIdentity", STS_XMLNS, &r))
        }
        (Service::Iam, "GetRole") => {
            let name = params.get("RoleName").cloned().unwrap_or_default();
            match &iam.caller {
                CallerSpec::AssumedRole { role, path, .. } if *role == name => {
                    let mut r = String::from("<Role>");
                    el(&mut r, "Path", path);
                    el(
                        &mut r,
                        "AssumeRolePolicyDocument",
                        "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D",
                    );
                    el(&mut r, "MaxSessionDuration", "3600");
                    el(&mut r, "RoleId", "AROAEICTESTROLE00001");
                    el(&mut r, "RoleName", role);
                    el(&mut r, "Arn", &iam.principal_arn(part, &account));
                    el(&mut r, "CreateDate", "2024-01-15T10:00:00Z");
                    r.push_str("</Role>");
                    Ok(answer("GetRole", IAM_XMLNS, &r))
                }
                _ => Err(err(
                    404,
                    "NoSuchEntity",
                    format!("The role with name {name} cannot be found."),
                )),
            }
        }
        (Service::Iam, "SimulatePrincipalPolicy") => simulate(iam, part, &account, params),
        (_, other) => Err(err(
            400,
            "InvalidAction",
            format!(
                "Could not find operation {other} for version {}",
                match service {
                    Service::Sts => STS_VERSION,
                    _ => IAM_VERSION,
                }
            ),
        )),
    }
}

/// A context value as sent: its type and values.
/// Condition keys (lowercase) -> (type, values), as a request carries them.
pub type Context = BTreeMap<String, (String, Vec<String>)>;

/// Whether a statement applies to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applies {
    Yes,
    No,
    /// Action and resource match, but the request lacks these condition
    /// keys (so it does not apply).
    Missing(Vec<String>),
}

impl Stmt {
    /// Whether the statement applies to `action` on `resource` with
    /// `context`: its action and resource patterns match, and every
    /// condition holds.
    pub fn applies(&self, action: &str, resource: &str, context: &Context) -> Applies {
        let acts = self.actions.iter().any(|p| glob(p, action, true));
        let res = self.resources.iter().any(|p| glob(p, resource, false));
        if !(acts && res) {
            return Applies::No;
        }
        let mut ok = true;
        let mut missing = Vec::new();
        for c in &self.conditions {
            match holds(c, context) {
                Ok(true) => {}
                Ok(false) => ok = false,
                Err(key) => {
                    ok = false;
                    missing.push(key);
                }
            }
        }
        match (ok, missing.is_empty()) {
            (true, _) => Applies::Yes,
            (false, true) => Applies::No,
            (false, false) => Applies::Missing(missing),
        }
    }

    /// The statements of a policy document (`Action`/`Resource` as a
    /// string or a list). Anything the model lacks (`NotAction`, an
    /// operator it does not know) panics, so it cannot pass unnoticed.
    pub fn parse_document(document: &serde_json::Value) -> Vec<Stmt> {
        let listed = |v: &serde_json::Value| -> Vec<String> {
            match v {
                serde_json::Value::String(s) => vec![s.clone()],
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().expect("strings").to_owned())
                    .collect(),
                other => panic!("not a string or a list: {other}"),
            }
        };
        let statements = document["Statement"]
            .as_array()
            .expect("Statement is a list");
        statements
            .iter()
            .map(|s| {
                for key in s.as_object().expect("a statement is an object").keys() {
                    assert!(
                        ["Sid", "Effect", "Action", "Resource", "Condition"]
                            .contains(&key.as_str()),
                        "{key} is not modelled"
                    );
                }
                let effect = match s["Effect"].as_str() {
                    Some("Allow") => Effect::Allow,
                    Some("Deny") => Effect::Deny,
                    other => panic!("Effect {other:?}"),
                };
                let mut conditions = Vec::new();
                if let Some(ops) = s["Condition"].as_object() {
                    for (operator, keys) in ops {
                        assert!(
                            KNOWN_OPERATORS.contains(&operator.as_str()),
                            "{operator} is not modelled"
                        );
                        for (key, values) in keys.as_object().expect("keys map to values") {
                            conditions.push(Condition {
                                operator: operator.clone(),
                                key: key.clone(),
                                values: listed(values),
                            });
                        }
                    }
                }
                Stmt {
                    sid: s["Sid"].as_str().unwrap_or_default().to_owned(),
                    effect,
                    actions: listed(&s["Action"]),
                    resources: listed(&s["Resource"]),
                    conditions,
                }
            })
            .collect()
    }
}

/// The condition operators [`holds`] knows.
const KNOWN_OPERATORS: &[&str] = &[
    "StringEquals",
    "StringEqualsIgnoreCase",
    "StringLike",
    "StringNotEquals",
    "NumericEquals",
    "NumericLessThanEquals",
    "NumericLessThan",
    "IpAddress",
    "NotIpAddress",
];

fn context_entries(params: &BTreeMap<String, String>) -> Context {
    let mut out = Context::new();
    for n in 1.. {
        let base = format!("ContextEntries.member.{n}");
        let Some(name) = params.get(&format!("{base}.ContextKeyName")) else {
            break;
        };
        let kind = params
            .get(&format!("{base}.ContextKeyType"))
            .cloned()
            .unwrap_or_default();
        let values = members(params, &format!("{base}.ContextKeyValues"));
        out.insert(name.to_ascii_lowercase(), (kind, values));
    }
    out
}

/// `*` and `?` wildcards, as IAM matches actions (case-insensitively) and
/// resources.
pub fn glob(pattern: &str, text: &str, fold: bool) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = if fold {
        (
            pattern.to_ascii_lowercase().chars().collect(),
            text.to_ascii_lowercase().chars().collect(),
        )
    } else {
        (pattern.chars().collect(), text.chars().collect())
    };
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn cidr_contains(cidr: &str, ip: &str) -> bool {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let (net, len) = cidr.split_once('/').unwrap_or((cidr, ""));
    let Ok(net) = net.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let len: u32 = len.parse().unwrap_or(32);
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let len: u32 = len.parse().unwrap_or(128);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// Whether one condition holds for the context; `Err(key)` when the
/// context lacks its key.
fn holds(c: &Condition, context: &Context) -> Result<bool, String> {
    let Some((_, values)) = context.get(&c.key.to_ascii_lowercase()) else {
        return Err(c.key.clone());
    };
    let num = |s: &str| s.parse::<f64>().ok();
    let any = |f: &dyn Fn(&str, &str) -> bool| {
        values
            .iter()
            .any(|v| c.values.iter().any(|want| f(want, v)))
    };
    Ok(match c.operator.as_str() {
        "StringEquals" => any(&|want, v| want == v),
        "StringEqualsIgnoreCase" => any(&|want, v| want.eq_ignore_ascii_case(v)),
        "StringLike" => any(&|want, v| glob(want, v, false)),
        "StringNotEquals" => !any(&|want, v| want == v),
        "NumericEquals" => any(&|want, v| num(want).is_some() && num(want) == num(v)),
        "NumericLessThanEquals" => {
            any(&|want, v| matches!((num(v), num(want)), (Some(v), Some(w)) if v <= w))
        }
        "NumericLessThan" => {
            any(&|want, v| matches!((num(v), num(want)), (Some(v), Some(w)) if v < w))
        }
        "IpAddress" => any(&|want, v| cidr_contains(want, v)),
        "NotIpAddress" => !any(&|want, v| cidr_contains(want, v)),
        _ => false,
    })
}

fn simulate(
    iam: &IamState,
    part: &str,
    account: &str,
    params: &BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    let source = params.get("PolicySourceArn").cloned().unwrap_or_default();
    if source.is_empty() {
        return Err(err(400, "InvalidInput", "PolicySourceArn is required"));
    }
    if source.contains(":sts:") {
        return Err(err(
            400,
            "InvalidInput",
            format!("Invalid ARN: {source} is not a user, group or role"),
        ));
    }
    if source != iam.principal_arn(part, account) {
        return Err(err(
            404,
            "NoSuchEntity",
            format!("The entity {source} cannot be found."),
        ));
    }
    let actions = members(params, "ActionNames");
    if actions.is_empty() {
        return Err(err(400, "InvalidInput", "ActionNames must not be empty"));
    }
    let resources = members(params, "ResourceArns");
    let resource = resources.first().cloned().unwrap_or_else(|| "*".into());
    let context = context_entries(params);
    let mut results = String::from("<EvaluationResults>");
    for action in &actions {
        let mut allows = Vec::new();
        let mut denies = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        for policy in &iam.policies {
            let positions = policy.positions();
            for (stmt, at) in policy.statements.iter().zip(positions) {
                match stmt.applies(action, &resource, &context) {
                    Applies::Yes => {
                        let hit = (policy.name.clone(), at);
                        match stmt.effect {
                            Effect::Allow => allows.push(hit),
                            Effect::Deny => denies.push(hit),
                        }
                    }
                    Applies::No => {}
                    Applies::Missing(keys) => {
                        for key in keys {
                            if !missing.contains(&key) {
                                missing.push(key);
                            }
                        }
                    }
                }
            }
        }
        let (decision, matched) = if !denies.is_empty() {
            ("explicitDeny", denies)
        } else if !allows.is_empty() {
            ("allowed", allows)
        } else {
            ("implicitDeny", Vec::new())
        };
        results.push_str("<member>");
        results.push_str("<MatchedStatements>");
        for (name, (line, column)) in matched {
            results.push_str("<member>");
            el(&mut results, "SourcePolicyId", &name);
            el(&mut results, "SourcePolicyType", "user-managed");
            results.push_str(&format!(
                "<StartPosition><Line>{line}</Line><Column>{column}</Column></StartPosition><EndPosition><Line>{}</Line><Column>6</Column></EndPosition>",
                line + 1
            ));
            results.push_str("</member>");
        }
        results.push_str("</MatchedStatements>");
        if missing.is_empty() {
            results.push_str("<MissingContextValues/>");
        } else {
            results.push_str("<MissingContextValues>");
            for key in &missing {
                el(&mut results, "member", key);
            }
            results.push_str("</MissingContextValues>");
        }
        el(&mut results, "EvalResourceName", &resource);
        el(&mut results, "EvalDecision", decision);
        el(&mut results, "EvalActionName", action);
        results.push_str("</member>");
    }
    results.push_str("</EvaluationResults><IsTruncated>false</IsTruncated>");
    Ok(answer("SimulatePrincipalPolicy", IAM_XMLNS, &results))
}

impl TestBed {
    /// The caller becomes this IAM user (path like `/` or `/ops/`).
    pub fn iam_user(&self, name: &str, path: &str) {
        self.api.lock().diag.iam.caller = CallerSpec::User {
            name: name.into(),
            path: path.into(),
        };
    }

    /// The caller becomes a session of this role (path like `/team/`).
    pub fn iam_assumed_role(&self, role: &str, path: &str, session: &str) {
        self.api.lock().diag.iam.caller = CallerSpec::AssumedRole {
            role: role.into(),
            path: path.into(),
            session: session.into(),
        };
    }

    /// Replaces the caller's policies with one named policy.
    pub fn iam_policy(&self, name: &str, statements: Vec<Stmt>) {
        self.api.lock().diag.iam.policies = vec![Policy {
            name: name.into(),
            statements,
        }];
    }

    /// Adds a policy to the caller's.
    pub fn iam_add_policy(&self, name: &str, statements: Vec<Stmt>) {
        self.api.lock().diag.iam.policies.push(Policy {
            name: name.into(),
            statements,
        });
    }

    /// The ARN the caller's policies are attached to.
    pub fn iam_principal_arn(&self) -> String {
        let st = self.api.lock();
        st.diag.iam.principal_arn(
            partition(&self.api.config.region),
            &self.api.config.account_id,
        )
    }
}
