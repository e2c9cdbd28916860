//! The default OS user, guessed from the instance's AMI when the user named
//! none: each distribution's images create one login user, and the AMI's
//! name, description and platform say which distribution it is.

use crate::aws::Clients;
use crate::aws::errors::{Attempt, from_sdk};

/// The OS user when nothing says otherwise.
pub const DEFAULT_OS_USER: &str = "ec2-user";

/// What chose the OS user (shown with `-v`, and in `list --json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSource {
    /// The command line: `USER@`, `-l`, `--os-user` or `-o User=`.
    CommandLine(&'static str),
    /// An alias, `EIC_CONNECT_OS_USER` or the config file (named).
    Layer(String),
    /// The guess from this instance's AMI on an earlier connection.
    Remembered,
    /// Guessed from the AMI now (the rule that matched).
    Guessed(String),
    /// `ec2-user`: nothing said otherwise (why, if known).
    Default(Option<String>),
}

impl UserSource {
    /// Whether the user was named (so nothing is guessed or looked up).
    pub fn is_given(&self) -> bool {
        matches!(self, UserSource::CommandLine(_) | UserSource::Layer(_))
    }
}

impl std::fmt::Display for UserSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserSource::CommandLine(flag) => f.write_str(flag),
            UserSource::Layer(layer) => f.write_str(layer),
            UserSource::Remembered => f.write_str("the AMI guess remembered for this instance"),
            UserSource::Guessed(rule) => write!(f, "guessed from {rule}"),
            UserSource::Default(None) => f.write_str("the default"),
            UserSource::Default(Some(why)) => write!(f, "the default ({why})"),
        }
    }
}

/// What DescribeImages says about an AMI (text from the cloud: untrusted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFacts {
    pub image_id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    /// `Linux/UNIX`, `Red Hat Enterprise Linux`, `SUSE Linux`, `Ubuntu Pro`,
    /// `Windows`, ...
    pub platform_details: Option<String>,
    /// `amazon`, `aws-marketplace`, or none.
    pub owner_alias: Option<String>,
}

/// A guess and the words that justify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guess {
    pub user: &'static str,
    /// The distribution recognised, e.g. `Ubuntu`.
    pub family: &'static str,
    /// Where it was recognised.
    pub evidence: Evidence,
}

/// Which part of the image named the distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    Platform,
    Name,
    Description,
    Owner,
}

impl Evidence {
    fn describe(self) -> &'static str {
        match self {
            Evidence::Platform => "the AMI's platform",
            Evidence::Name => "the AMI name",
            Evidence::Description => "the AMI description",
            Evidence::Owner => "the AMI owner (amazon)",
        }
    }
}

/// Keywords in the AMI's name or description, most specific first: Bitnami
/// images are built on Debian or Ubuntu, so they are checked before those.
const FAMILIES: &[(&[&str], &str, &str)] = &[
    (&["bitnami"], "bitnami", "Bitnami"),
    (&["ubuntu"], "ubuntu", "Ubuntu"),
    (&["debian"], "admin", "Debian"),
    (&["centos"], "centos", "CentOS"),
    (&["fedora"], "fedora", "Fedora"),
    (&["rocky"], "rocky", "Rocky Linux"),
    (
        &["amzn", "amazon linux", "al2023-ami"],
        "ec2-user",
        "Amazon Linux",
    ),
    (&["rhel", "red hat"], "ec2-user", "Red Hat Enterprise Linux"),
    (&["suse", "sles"], "ec2-user", "SUSE Linux"),
];

/// Guesses the OS user from what DescribeImages said; `None` when nothing is
/// recognised (or the image runs Windows, which has no EC2 Instance Connect).
pub fn guess(image: &ImageFacts) -> Option<Guess> {
    let platform = image.platform_details.as_deref().unwrap_or_default();
    if platform.starts_with("Windows") {
        return None;
    }
    // The billing platform is set by AWS and cannot be renamed: trust it
    // first where it names a distribution.
    let by_platform = [
        ("Red Hat", "ec2-user", "Red Hat Enterprise Linux"),
        ("SUSE", "ec2-user", "SUSE Linux"),
        ("Ubuntu Pro", "ubuntu", "Ubuntu"),
    ];
    let bitnami = |s: Option<&str>| s.is_some_and(|s| s.to_ascii_lowercase().contains("bitnami"));
    if !bitnami(image.name.as_deref()) && !bitnami(image.description.as_deref()) {
        for (prefix, user, family) in by_platform {
            if platform.starts_with(prefix) {
                return Some(Guess {
                    user,
                    family,
                    evidence: Evidence::Platform,
                });
            }
        }
    }
    for (text, evidence) in [
        (image.name.as_deref(), Evidence::Name),
        (image.description.as_deref(), Evidence::Description),
    ] {
        let Some(text) = text else { continue };
        let lower = text.to_ascii_lowercase();
        for (keywords, user, family) in FAMILIES {
            if keywords.iter().any(|k| lower.contains(k)) {
                return Some(Guess {
                    user,
                    family,
                    evidence,
                });
            }
        }
    }
    // Amazon's own images that say nothing else are Amazon Linux.
    (image.owner_alias.as_deref() == Some("amazon") && platform == "Linux/UNIX").then_some(Guess {
        user: "ec2-user",
        family: "Amazon Linux",
        evidence: Evidence::Owner,
    })
}

/// The OS user to use and the rule that chose it, for `-v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub user: String,
    pub source: UserSource,
}

impl Choice {
    /// Turns a lookup outcome into a choice, falling back to `ec2-user`.
    pub fn from_lookup(
        image_id: Option<&str>,
        found: Result<Option<ImageFacts>, String>,
    ) -> Choice {
        let safe = |s: &str| crate::sanitize::terminal_safe(s).into_owned();
        let fallback = |why: String| Choice {
            user: DEFAULT_OS_USER.to_owned(),
            source: UserSource::Default(Some(why)),
        };
        let Some(image_id) = image_id else {
            return fallback("the instance has no AMI id".into());
        };
        match found {
            Err(err) => fallback(format!("could not describe {image_id}: {err}")),
            Ok(None) => fallback(format!(
                "{image_id} is not visible: deregistered, or shared privately"
            )),
            Ok(Some(image)) => match guess(&image) {
                Some(g) => {
                    let shown = match g.evidence {
                        Evidence::Name => image.name.as_deref().map(safe),
                        Evidence::Description => image.description.as_deref().map(safe),
                        Evidence::Platform => image.platform_details.as_deref().map(safe),
                        Evidence::Owner => None,
                    };
                    let quoted = shown.map(|s| format!(" {s:?}")).unwrap_or_default();
                    Choice {
                        user: g.user.to_owned(),
                        source: UserSource::Guessed(format!(
                            "{}{quoted} ({image_id}): {}",
                            g.evidence.describe(),
                            g.family
                        )),
                    }
                }
                None if image
                    .platform_details
                    .as_deref()
                    .is_some_and(|p| p.starts_with("Windows")) =>
                {
                    fallback(format!("{image_id} is a Windows AMI"))
                }
                None => fallback(format!(
                    "nothing in {image_id}'s name or description names a distribution"
                )),
            },
        }
    }
}

/// DescribeImages for one AMI. `Ok(None)` when the image is not visible
/// (deregistered, or private to another account).
pub async fn describe_image(
    clients: &Clients,
    image_id: &str,
) -> anyhow::Result<Option<ImageFacts>> {
    match describe(clients, &[image_id]).await {
        Ok(found) => Ok(found.into_iter().find(|i| i.image_id == image_id)),
        Err(Missing) => Ok(None),
        Err(Failed(e)) => Err(e),
    }
}

/// DescribeImages for many AMIs in one call (for `list` and `run`); the
/// images not visible are simply missing. An error is given as the text to
/// show in place of a guess.
pub async fn describe_images(
    clients: &Clients,
    image_ids: &[&str],
) -> Result<Vec<ImageFacts>, String> {
    if image_ids.is_empty() {
        return Ok(Vec::new());
    }
    match describe(clients, image_ids).await {
        Ok(found) => Ok(found),
        // One invisible AMI fails the whole call: ask for each separately.
        Err(Missing) if image_ids.len() > 1 => {
            let each = image_ids.chunks(1).map(|id| describe(clients, id));
            let mut found = Vec::new();
            for result in futures_util::future::join_all(each).await {
                match result {
                    Ok(images) => found.extend(images),
                    Err(Missing) => {}
                    Err(Failed(e)) => return Err(one_line(e)),
                }
            }
            Ok(found)
        }
        Err(Missing) => Ok(Vec::new()),
        Err(Failed(e)) => Err(one_line(e)),
    }
}

/// Why DescribeImages gave no answer.
enum ImagesError {
    /// An id is not visible (`InvalidAMIID.*`).
    Missing,
    Failed(anyhow::Error),
}
use ImagesError::{Failed, Missing};

/// An error as one line of text, to show where a guess would be.
fn one_line(e: anyhow::Error) -> String {
    crate::error::render(&e)
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("eic-connect: error: ")
        .to_owned()
}

async fn describe(clients: &Clients, image_ids: &[&str]) -> Result<Vec<ImageFacts>, ImagesError> {
    let result = clients
        .ec2
        .describe_images()
        .set_image_ids(Some(image_ids.iter().map(|s| (*s).to_owned()).collect()))
        .send()
        .await;
    let out = match result {
        Ok(out) => out,
        Err(err)
            if err
                .as_service_error()
                .and_then(|e| aws_smithy_types::error::metadata::ProvideErrorMetadata::code(e))
                .is_some_and(|c| c.starts_with("InvalidAMIID")) =>
        {
            return Err(Missing);
        }
        Err(err) => {
            return Err(Failed(from_sdk(
                err,
                &Attempt {
                    op: "DescribeImages",
                    scope: &clients.scope,
                    instance_id: None,
                    os_user: None,
                },
            )));
        }
    };
    Ok(out
        .images()
        .iter()
        .filter_map(|i| {
            Some(ImageFacts {
                image_id: i.image_id()?.to_owned(),
                name: i.name().map(str::to_owned),
                description: i.description().map(str::to_owned),
                platform_details: i.platform_details().map(str::to_owned),
                owner_alias: i.image_owner_alias().map(str::to_owned),
            })
        })
        .collect())
}

/// Chooses the OS user for an instance from its AMI; never fails (a failed
/// lookup warns and falls back to `ec2-user`).
pub async fn choose_for_image(clients: &Clients, image_id: Option<&str>) -> Choice {
    let found = match image_id {
        Some(id) => describe_image(clients, id).await.map_err(one_line),
        None => Ok(None),
    };
    // The guess only improves the connection: a failed lookup is a warning.
    if let Err(err) = &found {
        eprintln!(
            "eic-connect: warning: could not look up the AMI to guess the OS user ({err}); trying {DEFAULT_OS_USER} (choose one with -l USER)"
        );
    }
    Choice::from_lookup(image_id, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, description: &str, platform: &str) -> ImageFacts {
        ImageFacts {
            image_id: "ami-0123456789abcdef0".into(),
            name: Some(name.into()).filter(|s: &String| !s.is_empty()),
            description: Some(description.into()).filter(|s: &String| !s.is_empty()),
            platform_details: Some(platform.into()),
            owner_alias: None,
        }
    }

    fn user(name: &str, description: &str, platform: &str) -> Option<&'static str> {
        guess(&image(name, description, platform)).map(|g| g.user)
    }

    /// Names and descriptions as the distributions publish them.
    #[test]
    fn each_ami_family() {
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            (
                "al2023-ami-2023.1.20230725.0-kernel-6.1-x86_64",
                "Amazon Linux 2023 AMI 2023.1.20230725.0 x86_64 HVM kernel-6.1",
                "Linux/UNIX",
                Some("ec2-user"),
            ),
            (
                "amzn2-ami-kernel-5.10-hvm-2.0.20230719.0-x86_64-gp2",
                "Amazon Linux 2 Kernel 5.10 AMI 2.0.20230719.0 x86_64 HVM gp2",
                "Linux/UNIX",
                Some("ec2-user"),
            ),
            (
                "RHEL-9.2.0_HVM-20230503-x86_64-41-Hourly2-GP2",
                "Provided by Red Hat, Inc.",
                "Red Hat Enterprise Linux",
                Some("ec2-user"),
            ),
            (
                "suse-sles-15-sp5-v20230620-hvm-ssd-x86_64",
                "SUSE Linux Enterprise Server 15 SP5 (HVM, 64-bit, SSD-Backed)",
                "SUSE Linux",
                Some("ec2-user"),
            ),
            (
                "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20230516",
                "Canonical, Ubuntu, 22.04 LTS, amd64 jammy image build on 2023-05-16",
                "Linux/UNIX",
                Some("ubuntu"),
            ),
            (
                "ubuntu-pro-server/images/hvm-ssd/ubuntu-jammy-22.04-amd64-pro-server-20230516",
                "",
                "Ubuntu Pro",
                Some("ubuntu"),
            ),
            (
                "debian-12-amd64-20230711-1438",
                "Debian 12 (20230711-1438)",
                "Linux/UNIX",
                Some("admin"),
            ),
            (
                "CentOS Stream 9 x86_64 20230710",
                "CentOS Stream 9 x86_64 20230710",
                "Linux/UNIX",
                Some("centos"),
            ),
            (
                "Fedora-Cloud-Base-38-1.6.x86_64-hvm-us-east-1-gp3-0",
                "Fedora-Cloud-Base-38-1.6.x86_64",
                "Linux/UNIX",
                Some("fedora"),
            ),
            (
                "bitnami-wordpress-6.2.2-22-r05-linux-debian-11-x86_64-hvm-ebs-nami",
                "Bitnami WordPress 6.2.2-22-r05 on Debian 11",
                "Linux/UNIX",
                Some("bitnami"),
            ),
            (
                "Windows_Server-2022-English-Full-Base-2023.07.12",
                "Microsoft Windows Server 2022 Full Locale English AMI provided by Amazon",
                "Windows",
                None,
            ),
            ("my-golden-image-42", "built by packer", "Linux/UNIX", None),
        ];
        for (name, description, platform, expected) in cases {
            assert_eq!(user(name, description, platform), *expected, "{name}");
        }
    }

    #[test]
    fn platform_beats_a_misleading_name_except_for_bitnami() {
        assert_eq!(
            user("my-ubuntu-clone", "", "Red Hat Enterprise Linux"),
            Some("ec2-user")
        );
        assert_eq!(
            user("bitnami-redmine-5-rhel", "", "Red Hat Enterprise Linux"),
            Some("bitnami")
        );
        // The description is used when the name says nothing.
        let g = guess(&image("golden-1", "Debian 12 based", "Linux/UNIX")).unwrap();
        assert_eq!((g.user, g.evidence), ("admin", Evidence::Description));
        // Amazon-owned images that name nothing are Amazon Linux.
        let mut amazon = image("x86_64-minimal", "", "Linux/UNIX");
        amazon.owner_alias = Some("amazon".into());
        assert_eq!(guess(&amazon).map(|g| g.user), Some("ec2-user"));
    }

    #[test]
    fn choices_say_which_rule_chose_them() {
        let found = Ok(Some(image(
            "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20230516",
            "",
            "Linux/UNIX",
        )));
        let c = Choice::from_lookup(Some("ami-0123456789abcdef0"), found);
        assert_eq!(c.user, "ubuntu");
        assert!(
            c.source
                .to_string()
                .starts_with("guessed from the AMI name \"ubuntu/images"),
            "{}",
            c.source.to_string()
        );
        assert!(
            c.source
                .to_string()
                .ends_with("(ami-0123456789abcdef0): Ubuntu"),
            "{}",
            c.source.to_string()
        );

        let c = Choice::from_lookup(Some("ami-1"), Ok(None));
        assert_eq!(c.user, "ec2-user");
        assert!(
            c.source.to_string().contains("not visible"),
            "{}",
            c.source.to_string()
        );
        let c = Choice::from_lookup(Some("ami-1"), Err("not authorized".into()));
        assert!(
            c.source
                .to_string()
                .contains("could not describe ami-1: not authorized")
        );
        let c = Choice::from_lookup(None, Ok(None));
        assert!(c.source.to_string().starts_with("the default"));
        let c = Choice::from_lookup(Some("ami-1"), Ok(Some(image("x", "", "Windows"))));
        assert!(c.source.to_string().contains("Windows"));
    }

    #[test]
    fn hostile_image_names_are_shown_safely() {
        let found = Ok(Some(image("ubuntu\x1b[2J", "", "Linux/UNIX")));
        let c = Choice::from_lookup(Some("ami-1"), found);
        assert!(
            !c.source.to_string().contains('\x1b'),
            "{}",
            c.source.to_string()
        );
    }
}

/// File under the state directory remembering AMI-based guesses, one
/// `instance-id user` line each. An instance's AMI never changes and instance
/// ids are never reused, so a remembered guess never goes stale; it lets the
/// next connection push at once, concurrently with the lookup.
const REMEMBERED: &str = "os-users";
/// Beyond this size the file is started afresh.
const REMEMBERED_MAX_BYTES: u64 = 256 * 1024;

/// The user guessed from this instance's AMI on an earlier connection.
pub fn remembered(state_dir: &std::path::Path, instance_id: &str) -> Option<String> {
    let text = std::fs::read_to_string(state_dir.join(REMEMBERED)).ok()?;
    text.lines().rev().find_map(|line| {
        let (id, user) = line.split_once(' ')?;
        (id == instance_id && crate::target::validate_user(user).is_ok()).then(|| user.to_owned())
    })
}

/// Remembers a guess made from the AMI (not a fallback). Best effort.
pub fn remember(state_dir: &std::path::Path, instance_id: &str, user: &str) {
    use std::io::Write;
    let path = state_dir.join(REMEMBERED);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > REMEMBERED_MAX_BYTES) {
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::create_dir_all(state_dir);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        // One write: concurrent appenders (O_APPEND) never interleave it.
        let _ = file.write_all(format!("{instance_id} {user}\n").as_bytes());
    }
}

#[cfg(test)]
mod remembered_tests {
    use super::*;

    #[test]
    fn remembers_the_latest_guess_per_instance() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(remembered(dir.path(), "i-01234567"), None);
        remember(dir.path(), "i-01234567", "ubuntu");
        remember(dir.path(), "i-89abcdef", "admin");
        assert_eq!(
            remembered(dir.path(), "i-01234567").as_deref(),
            Some("ubuntu")
        );
        assert_eq!(
            remembered(dir.path(), "i-89abcdef").as_deref(),
            Some("admin")
        );
        std::fs::write(dir.path().join(REMEMBERED), "i-01234567 -oProxyCommand=x\n").unwrap();
        assert_eq!(
            remembered(dir.path(), "i-01234567"),
            None,
            "a tampered entry is ignored"
        );
    }
}
