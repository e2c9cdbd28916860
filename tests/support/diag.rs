//! Stand-in handlers for the calls behind host-key verification, OS-user
//! guessing and `doctor`: EC2 `GetConsoleOutput`, `DescribeImages`,
//! `DescribeSecurityGroups` and `DescribeManagedPrefixLists` (Query protocol,
//! XML), the changes `doctor --fix` makes (`AuthorizeSecurityGroupIngress`,
//! `ModifyInstanceMetadataOptions`), plus the [`TestBed`] methods that set
//! up what they answer. (The IAM and STS state lives here too, in
//! [`DiagState::iam`]; its handlers are in `iam.rs`.)
//! (`SendSerialConsoleSSHPublicKey` lives in `api.rs` with the other EC2
//! Instance Connect calls; see [`TestBed::serial_pushes`].)
//!
//! Defaults: the bed's one security group (`bed.security_group_id()`)
//! allows TCP 22 from 0.0.0.0/0; the AWS-managed prefix list
//! `com.amazonaws.<region>.ec2-instance-connect` exists with id
//! [`TestBed::console_prefix_list_id`]; no image is registered (an unknown
//! AMI id answers with an empty set, as for a deregistered AMI); consoles
//! are empty.

use std::collections::{BTreeMap, HashMap};

use super::api::{self, Api, State};
use super::http::Response;
use super::{TestBed, timefmt};

/// The console prefix list's id in every bed.
pub const CONSOLE_PREFIX_LIST_ID: &str = "pl-0e4bcff02b13bef1e";

/// An AMI as DescribeImages reports it.
#[derive(Debug, Clone, Default)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub description: String,
    /// `Linux/UNIX`, `Red Hat Enterprise Linux`, `Windows`, ...
    pub platform_details: String,
    /// `amazon`, `aws-marketplace`, or empty.
    pub owner_alias: String,
}

/// One inbound rule. Build with [`SgRule::tcp`] and the `allow_*` methods.
#[derive(Debug, Clone, Default)]
pub struct SgRule {
    /// `tcp`, `udp`, `-1`...
    pub protocol: String,
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    pub cidrs: Vec<String>,
    pub groups: Vec<String>,
    pub prefix_lists: Vec<String>,
}

impl SgRule {
    /// TCP ports `from..=to`, open to nothing yet.
    pub fn tcp(from: i32, to: i32) -> SgRule {
        SgRule {
            protocol: "tcp".into(),
            from_port: Some(from),
            to_port: Some(to),
            ..SgRule::default()
        }
    }
    pub fn allow_cidr(mut self, cidr: &str) -> SgRule {
        self.cidrs.push(cidr.into());
        self
    }
    pub fn allow_group(mut self, group: &str) -> SgRule {
        self.groups.push(group.into());
        self
    }
    pub fn allow_prefix_list(mut self, pl: &str) -> SgRule {
        self.prefix_lists.push(pl.into());
        self
    }
}

/// What these handlers know, kept in the stand-in's state.
#[derive(Debug, Default)]
pub struct DiagState {
    /// Instance id -> console text.
    pub console: HashMap<String, String>,
    pub images: Vec<Image>,
    /// Security group id -> (name, inbound rules). The bed's default group
    /// is added on first use if not set.
    pub groups: BTreeMap<String, (String, Vec<SgRule>)>,
    /// Inbound rules a group may hold (RulesPerSecurityGroupLimitExceeded
    /// beyond); 60 when unset.
    pub rule_limit: Option<usize>,
    /// The IAM and STS stand-ins' caller and policies.
    pub iam: super::iam::IamState,
}

/// Whether `action` is one of these handlers'.
pub fn handles(action: &str) -> bool {
    matches!(
        action,
        "GetConsoleOutput"
            | "DescribeImages"
            | "DescribeSecurityGroups"
            | "DescribeManagedPrefixLists"
            | "AuthorizeSecurityGroupIngress"
            | "ModifyInstanceMetadataOptions"
    )
}

type ApiError = (u16, String, String);

fn err(status: u16, code: &str, msg: impl Into<String>) -> ApiError {
    (status, code.to_owned(), msg.into())
}

fn el(out: &mut String, name: &str, text: &str) {
    if text.is_empty() {
        out.push_str(&format!("<{name}/>"));
    } else {
        out.push_str(&format!("<{name}>{}</{name}>", api::xml_escape(text)));
    }
}

fn xml_response(action: &str, body: &str) -> Response {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!("<{action}Response xmlns=\"{}\">", api::EC2_XMLNS));
    el(&mut x, "requestId", &api::uuid_like());
    x.push_str(body);
    x.push_str(&format!("</{action}Response>"));
    Response::new(200, "text/xml;charset=UTF-8", x)
}

/// `Prefix.N` values in index order.
fn list(params: &BTreeMap<String, String>, prefix: &str) -> Vec<String> {
    let mut v: Vec<(usize, String)> = params
        .iter()
        .filter_map(|(k, val)| {
            let n = k.strip_prefix(prefix)?.strip_prefix('.')?.parse().ok()?;
            Some((n, val.clone()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, s)| s).collect()
}

/// `Filter.N.Name` = `name` -> its values.
fn filter_values(params: &BTreeMap<String, String>, name: &str) -> Option<Vec<String>> {
    let n = params.iter().find_map(|(k, v)| {
        let idx = k.strip_prefix("Filter.")?.strip_suffix(".Name")?;
        (v == name).then(|| idx.to_owned())
    })?;
    Some(list(params, &format!("Filter.{n}.Value")))
}

/// Answers one of [`handles`]'s actions.
pub fn handle(
    api: &Api,
    st: &mut State,
    action: &str,
    params: &BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    match action {
        "GetConsoleOutput" => get_console_output(api, st, params),
        "DescribeImages" => describe_images(st, params),
        "DescribeSecurityGroups" => describe_security_groups(api, st, params),
        "DescribeManagedPrefixLists" => describe_prefix_lists(api, params),
        "AuthorizeSecurityGroupIngress" => authorize_ingress(api, st, params),
        "ModifyInstanceMetadataOptions" => modify_metadata_options(api, st, params),
        other => Err(err(
            400,
            "InvalidAction",
            format!("The action {other} is not valid"),
        )),
    }
}

fn get_console_output(
    api: &Api,
    st: &State,
    p: &BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    let id = p.get("InstanceId").ok_or_else(|| {
        err(
            400,
            "MissingParameter",
            "The request must contain the parameter InstanceId",
        )
    })?;
    if !api::is_ec2_instance_id(id) {
        return Err(err(
            400,
            "InvalidInstanceID.Malformed",
            format!("Invalid id: \"{id}\""),
        ));
    }
    if !st.instances.iter().any(|i| &i.id == id) {
        return Err(err(
            400,
            "InvalidInstanceID.NotFound",
            format!("The instance ID '{id}' does not exist"),
        ));
    }
    let mut body = String::new();
    el(&mut body, "instanceId", id);
    el(&mut body, "timestamp", &timefmt::iso8601(api.now(st)));
    if let Some(text) = st.diag.console.get(id) {
        el(
            &mut body,
            "output",
            &aws_smithy_types::base64::encode(text.as_bytes()),
        );
    }
    Ok(xml_response("GetConsoleOutput", &body))
}

fn describe_images(st: &State, p: &BTreeMap<String, String>) -> Result<Response, ApiError> {
    let ids = list(p, "ImageId");
    for id in &ids {
        let ok = id
            .strip_prefix("ami-")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(err(
                400,
                "InvalidAMIID.Malformed",
                format!("Invalid id: \"{id}\" (expecting \"ami-...\")"),
            ));
        }
    }
    let mut body = String::from("<imagesSet>");
    for image in st
        .diag
        .images
        .iter()
        .filter(|i| ids.is_empty() || ids.contains(&i.id))
    {
        body.push_str("<item>");
        el(&mut body, "imageId", &image.id);
        el(
            &mut body,
            "imageLocation",
            &format!("123456789012/{}", image.name),
        );
        el(&mut body, "imageState", "available");
        el(&mut body, "imageOwnerId", "123456789012");
        el(&mut body, "isPublic", "true");
        el(&mut body, "architecture", "x86_64");
        el(&mut body, "imageType", "machine");
        if !image.owner_alias.is_empty() {
            el(&mut body, "imageOwnerAlias", &image.owner_alias);
        }
        el(&mut body, "name", &image.name);
        if !image.description.is_empty() {
            el(&mut body, "description", &image.description);
        }
        el(&mut body, "rootDeviceType", "ebs");
        el(&mut body, "rootDeviceName", "/dev/xvda");
        el(&mut body, "virtualizationType", "hvm");
        el(&mut body, "hypervisor", "xen");
        el(&mut body, "platformDetails", &image.platform_details);
        el(&mut body, "usageOperation", "RunInstances");
        body.push_str("</item>");
    }
    body.push_str("</imagesSet>");
    Ok(xml_response("DescribeImages", &body))
}

fn default_group(api: &Api) -> (String, (String, Vec<SgRule>)) {
    (
        api.config.security_group_id.clone(),
        (
            "default".to_owned(),
            vec![SgRule::tcp(22, 22).allow_cidr("0.0.0.0/0")],
        ),
    )
}

fn describe_security_groups(
    api: &Api,
    st: &mut State,
    p: &BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    let (default_id, default) = default_group(api);
    st.diag.groups.entry(default_id).or_insert(default);
    let ids = list(p, "GroupId");
    if let Some(missing) = ids.iter().find(|id| !st.diag.groups.contains_key(*id)) {
        return Err(err(
            400,
            "InvalidGroup.NotFound",
            format!("The security group '{missing}' does not exist"),
        ));
    }
    // Filters: group-name and vpc-id (every group is in the bed's VPC).
    let names = filter_values(p, "group-name");
    let vpcs = filter_values(p, "vpc-id");
    let in_vpc = vpcs.is_none_or(|v| v.contains(&api.config.vpc_id));
    let mut body = String::from("<securityGroupInfo>");
    for (id, (name, rules)) in st
        .diag
        .groups
        .iter()
        .filter(|(id, _)| ids.is_empty() || ids.contains(id))
        .filter(|(_, (name, _))| in_vpc && names.as_ref().is_none_or(|n| n.contains(name)))
    {
        body.push_str("<item>");
        el(&mut body, "ownerId", &api.config.account_id);
        el(&mut body, "groupId", id);
        el(&mut body, "groupName", name);
        el(&mut body, "groupDescription", &format!("{name} group"));
        el(&mut body, "vpcId", &api.config.vpc_id);
        body.push_str("<ipPermissions>");
        permissions_xml(&mut body, rules, &api.config.account_id);
        body.push_str("</ipPermissions><ipPermissionsEgress>");
        // Outbound: what the test set (`set_security_group_egress`), else
        // AWS's default for a new group, everything to anywhere.
        let everything = vec![SgRule {
            protocol: "-1".into(),
            cidrs: vec!["0.0.0.0/0".into()],
            ..SgRule::default()
        }];
        let egress = st.eice.egress.get(id).unwrap_or(&everything);
        permissions_xml(&mut body, egress, &api.config.account_id);
        body.push_str("</ipPermissionsEgress>");
        body.push_str("</item>");
    }
    body.push_str("</securityGroupInfo>");
    Ok(xml_response("DescribeSecurityGroups", &body))
}

/// Rules as EC2 writes `ipPermissions` / `ipPermissionsEgress` items.
fn permissions_xml(body: &mut String, rules: &[SgRule], account_id: &str) {
    for rule in rules {
        body.push_str("<item>");
        el(body, "ipProtocol", &rule.protocol);
        if let Some(from) = rule.from_port {
            el(body, "fromPort", &from.to_string());
        }
        if let Some(to) = rule.to_port {
            el(body, "toPort", &to.to_string());
        }
        body.push_str("<groups>");
        for g in &rule.groups {
            body.push_str("<item>");
            el(body, "userId", account_id);
            el(body, "groupId", g);
            body.push_str("</item>");
        }
        body.push_str("</groups><ipRanges>");
        for c in rule.cidrs.iter().filter(|c| !c.contains(':')) {
            body.push_str("<item>");
            el(body, "cidrIp", c);
            body.push_str("</item>");
        }
        body.push_str("</ipRanges><ipv6Ranges>");
        for c in rule.cidrs.iter().filter(|c| c.contains(':')) {
            body.push_str("<item>");
            el(body, "cidrIpv6", c);
            body.push_str("</item>");
        }
        body.push_str("</ipv6Ranges><prefixListIds>");
        for pl in &rule.prefix_lists {
            body.push_str("<item>");
            el(body, "prefixListId", pl);
            body.push_str("</item>");
        }
        body.push_str("</prefixListIds></item>");
    }
}

fn describe_prefix_lists(api: &Api, p: &BTreeMap<String, String>) -> Result<Response, ApiError> {
    let region = &api.config.region;
    let lists = [
        (
            CONSOLE_PREFIX_LIST_ID.to_owned(),
            format!("com.amazonaws.{region}.ec2-instance-connect"),
        ),
        (
            "pl-63a5400a".to_owned(),
            format!("com.amazonaws.{region}.s3"),
        ),
    ];
    let names = filter_values(p, "prefix-list-name");
    let ids = list(p, "PrefixListId");
    let mut body = String::from("<prefixListSet>");
    for (id, name) in lists.iter().filter(|(id, name)| {
        names.as_ref().is_none_or(|n| n.contains(name)) && (ids.is_empty() || ids.contains(id))
    }) {
        body.push_str("<item>");
        el(&mut body, "prefixListId", id);
        el(&mut body, "addressFamily", "IPv4");
        el(&mut body, "state", "create-complete");
        el(
            &mut body,
            "prefixListArn",
            &format!("arn:aws:ec2:{region}:aws:prefix-list/{id}"),
        );
        el(&mut body, "prefixListName", name);
        el(&mut body, "ownerId", "AWS");
        body.push_str("</item>");
    }
    body.push_str("</prefixListSet>");
    Ok(xml_response("DescribeManagedPrefixLists", &body))
}

/// `AuthorizeSecurityGroupIngress` with `IpPermissions.N.*`: adds the
/// rules, refusing duplicates (`InvalidPermission.Duplicate`) and groups
/// past the rule limit.
fn authorize_ingress(
    api: &Api,
    st: &mut State,
    p: &BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    let (default_id, default) = default_group(api);
    st.diag.groups.entry(default_id).or_insert(default);
    let Some(group_id) = p.get("GroupId") else {
        return Err(err(
            400,
            "MissingParameter",
            "The request must contain the parameter GroupId",
        ));
    };
    if !group_id.starts_with("sg-") {
        return Err(err(
            400,
            "InvalidGroupId.Malformed",
            format!("Invalid id: \"{group_id}\""),
        ));
    }
    let limit = st.diag.rule_limit.unwrap_or(60);
    let Some((_, rules)) = st.diag.groups.get_mut(group_id) else {
        return Err(err(
            400,
            "InvalidGroup.NotFound",
            format!("The security group '{group_id}' does not exist"),
        ));
    };
    let mut new = Vec::new();
    for n in 1.. {
        let base = format!("IpPermissions.{n}");
        let Some(protocol) = p.get(&format!("{base}.IpProtocol")) else {
            break;
        };
        let port = |k: &str| p.get(&format!("{base}.{k}")).and_then(|v| v.parse().ok());
        // `IpRanges.N.CidrIp` and `Ipv6Ranges.N.CidrIpv6`.
        let mut cidrs = Vec::new();
        for (k, v) in p {
            if let Some(rest) = k.strip_prefix(&format!("{base}."))
                && (rest.starts_with("IpRanges.") && rest.ends_with(".CidrIp")
                    || rest.starts_with("Ipv6Ranges.") && rest.ends_with(".CidrIpv6"))
            {
                cidrs.push(v.clone());
            }
        }
        let mut groups = Vec::new();
        let mut prefix_lists = Vec::new();
        for (k, v) in p {
            if let Some(rest) = k.strip_prefix(&format!("{base}.")) {
                if (rest.starts_with("Groups.") || rest.starts_with("UserIdGroupPairs."))
                    && rest.ends_with(".GroupId")
                {
                    groups.push(v.clone());
                }
                if rest.starts_with("PrefixListIds.") && rest.ends_with(".PrefixListId") {
                    prefix_lists.push(v.clone());
                }
            }
        }
        if cidrs.is_empty() && groups.is_empty() && prefix_lists.is_empty() {
            return Err(err(
                400,
                "InvalidPermission.Malformed",
                "No source given for the permission",
            ));
        }
        let rule = SgRule {
            protocol: protocol.clone(),
            from_port: port("FromPort"),
            to_port: port("ToPort"),
            cidrs,
            groups,
            prefix_lists,
        };
        let same_ports = |r: &SgRule| {
            r.protocol == rule.protocol
                && r.from_port == rule.from_port
                && r.to_port == rule.to_port
        };
        let duplicate = rules.iter().filter(|r| same_ports(r)).any(|r| {
            rule.cidrs.iter().any(|c| r.cidrs.contains(c))
                || rule.groups.iter().any(|g| r.groups.contains(g))
                || rule.prefix_lists.iter().any(|l| r.prefix_lists.contains(l))
        });
        if duplicate {
            return Err(err(
                400,
                "InvalidPermission.Duplicate",
                format!(
                    "the specified rule \"peer: {}, TCP, from port: {}, to port: {}, ALLOW\" already exists",
                    rule.cidrs
                        .first()
                        .or(rule.groups.first())
                        .cloned()
                        .unwrap_or_default(),
                    rule.from_port.unwrap_or(-1),
                    rule.to_port.unwrap_or(-1)
                ),
            ));
        }
        new.push(rule);
    }
    if new.is_empty() {
        return Err(err(
            400,
            "MissingParameter",
            "The request must contain the parameter IpPermissions",
        ));
    }
    if rules.len() + new.len() > limit {
        return Err(err(
            400,
            "RulesPerSecurityGroupLimitExceeded",
            "The maximum number of rules per security group has been reached.",
        ));
    }
    rules.extend(new);
    let mut body = String::new();
    el(&mut body, "return", "true");
    Ok(xml_response("AuthorizeSecurityGroupIngress", &body))
}

/// `ModifyInstanceMetadataOptions`: sets `HttpEndpoint` (the only option
/// the bed models).
fn modify_metadata_options(
    _api: &Api,
    st: &mut State,
    p: &BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    let id = p.get("InstanceId").cloned().unwrap_or_default();
    if !api::is_ec2_instance_id(&id) {
        return Err(err(
            400,
            "InvalidInstanceID.Malformed",
            format!("Invalid id: \"{id}\""),
        ));
    }
    let Some(rec) = st.instances.iter_mut().find(|i| i.id == id) else {
        return Err(err(
            400,
            "InvalidInstanceID.NotFound",
            format!("The instance ID '{id}' does not exist"),
        ));
    };
    if rec.state == "terminated" {
        return Err(err(
            400,
            "IncorrectInstanceState",
            format!("The instance '{id}' is not in a state from which it can be modified."),
        ));
    }
    if let Some(endpoint) = p.get("HttpEndpoint") {
        if endpoint != "enabled" && endpoint != "disabled" {
            return Err(err(
                400,
                "InvalidParameterValue",
                format!("Value ({endpoint}) for parameter HttpEndpoint is invalid."),
            ));
        }
        rec.metadata_http_endpoint = endpoint.clone();
    }
    let mut body = String::new();
    el(&mut body, "instanceId", &id);
    body.push_str("<instanceMetadataOptions>");
    el(&mut body, "state", "pending");
    el(&mut body, "httpTokens", "required");
    el(&mut body, "httpPutResponseHopLimit", "2");
    el(&mut body, "httpEndpoint", &rec.metadata_http_endpoint);
    body.push_str("</instanceMetadataOptions>");
    Ok(xml_response("ModifyInstanceMetadataOptions", &body))
}

/// Realistic console output around cloud-init's host-key blocks: boot noise,
/// the fingerprints through syslog (`<14>… ec2: ` prefixes), the key lines
/// raw, CRLF line ends. `keys` are OpenSSH public key lines.
pub fn cloud_init_console(keys: &[&str]) -> String {
    let prefix = "<14>Nov 23 18:06:28 ec2: ";
    let mut s = String::from(
        "[    0.000000] Linux version 6.1.55-75.123.amzn2023.x86_64 (mockbuild@ip-10-0-1-2)\r\n\
         [    1.234567] Run /init as init process\r\n\
         [  OK  ] Started cloud-init.service - Initial cloud-init job (metadata service crawler).\r\n",
    );
    s.push_str(&format!(
        "{prefix}\r\n{prefix}#############################################################\r\n"
    ));
    s.push_str(&format!(
        "{prefix}-----BEGIN SSH HOST KEY FINGERPRINTS-----\r\n"
    ));
    for key in keys {
        if let Ok(k) = ssh_key::PublicKey::from_openssh(key) {
            let kind = match k.algorithm().as_str() {
                "ssh-ed25519" => "ED25519",
                "ssh-rsa" => "RSA",
                _ => "ECDSA",
            };
            s.push_str(&format!(
                "{prefix}256 {} root@ip-172-31-0-10 ({kind})\r\n",
                k.fingerprint(ssh_key::HashAlg::Sha256)
            ));
        }
    }
    s.push_str(&format!(
        "{prefix}-----END SSH HOST KEY FINGERPRINTS-----\r\n"
    ));
    s.push_str(&format!(
        "{prefix}#############################################################\r\n"
    ));
    s.push_str("-----BEGIN SSH HOST KEY KEYS-----\r\n");
    for key in keys {
        s.push_str(key.trim());
        s.push_str(" root@ip-172-31-0-10\r\n");
    }
    s.push_str("-----END SSH HOST KEY KEYS-----\r\n");
    s.push_str("[   24.506227] cloud-init[2547]: Cloud-init v. 22.2.2 finished at Thu, 23 Nov 2023 18:06:29 +0000. Up 24.49 seconds\r\n");
    s.push_str("\r\nAmazon Linux 2023\r\nKernel 6.1.55-75.123.amzn2023.x86_64 on an x86_64\r\n\r\nip-172-31-0-10 login: ");
    s
}

impl TestBed {
    /// Set what GetConsoleOutput returns for an instance.
    pub fn set_console_output(&self, instance_id: &str, text: &str) {
        self.api
            .lock()
            .diag
            .console
            .insert(instance_id.to_owned(), text.to_owned());
    }

    /// A console whose cloud-init block lists the bed sshd's real host key.
    pub fn host_key_console(&self) -> String {
        cloud_init_console(&[self.host_public_key()])
    }

    /// The bed sshd's host-key fingerprint, `SHA256:…`.
    pub fn host_key_fingerprint(&self) -> String {
        ssh_key::PublicKey::from_openssh(self.host_public_key())
            .expect("bed host key")
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string()
    }

    /// Register an AMI for DescribeImages.
    pub fn register_image(&self, id: &str, name: &str, description: &str, platform_details: &str) {
        self.api.lock().diag.images.push(Image {
            id: id.into(),
            name: name.into(),
            description: description.into(),
            platform_details: platform_details.into(),
            owner_alias: String::new(),
        });
    }

    /// Register an Ubuntu 22.04 AMI (whose OS user eic-connect guesses as
    /// `ubuntu`) and return its id.
    pub fn register_ubuntu_image(&self) -> &'static str {
        let id = "ami-0b000000000000001";
        self.register_image(
            id,
            "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240101",
            "Canonical, Ubuntu, 22.04 LTS",
            "Linux/UNIX",
        );
        id
    }

    /// The security group every instance of the bed is in.
    pub fn security_group_id(&self) -> String {
        self.api.config.security_group_id.clone()
    }

    /// Replace a security group's inbound rules (creating the group; the
    /// bed's own group keeps its name, `default`).
    pub fn set_security_group(&self, id: &str, rules: Vec<SgRule>) {
        let name = if id == self.api.config.security_group_id {
            "default"
        } else {
            "eic-test"
        };
        self.api
            .lock()
            .diag
            .groups
            .insert(id.to_owned(), (name.to_owned(), rules));
    }

    /// The inbound rules of a security group (the bed's default group
    /// as it starts when never set).
    pub fn security_group_rules(&self, id: &str) -> Vec<SgRule> {
        let st = self.api.lock();
        match st.diag.groups.get(id) {
            Some((_, rules)) => rules.clone(),
            None if id == self.api.config.security_group_id => {
                vec![SgRule::tcp(22, 22).allow_cidr("0.0.0.0/0")]
            }
            None => Vec::new(),
        }
    }

    /// An instance's metadata `HttpEndpoint` as the bed holds it now.
    pub fn api_instance_metadata_endpoint(&self, instance_id: &str) -> Option<String> {
        let st = self.api.lock();
        st.instances
            .iter()
            .find(|i| i.id == instance_id)
            .map(|i| i.metadata_http_endpoint.clone())
    }

    /// How many inbound rules a security group may hold.
    pub fn set_rule_limit(&self, n: usize) {
        self.api.lock().diag.rule_limit = Some(n);
    }

    /// Id of the `com.amazonaws.<region>.ec2-instance-connect` prefix list.
    pub fn console_prefix_list_id(&self) -> &'static str {
        CONSOLE_PREFIX_LIST_ID
    }
}
