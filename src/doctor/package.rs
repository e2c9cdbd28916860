//! The `package` check: whether the instance's AMI ships the EC2 Instance
//! Connect package (the sshd `AuthorizedKeysCommand` that fetches pushed
//! keys), and if not, how to install it. Told from the AMI's name,
//! description and platform; never a failure, since an instance may have
//! had it installed after launch.
//!
//! AWS's guide ("Install EC2 Instance Connect"): preinstalled on Amazon
//! Linux 2023, Amazon Linux 2 from 2.0.20190618, Ubuntu 20.04 and later and
//! macOS AMIs; installable on Amazon Linux 2 (and AL2023 minimal), Ubuntu
//! 16.04 and later, RHEL 8 and 9 and CentOS Stream 8 and 9 (AWS's RPMs).

use crate::osuser::ImageFacts;

use super::checks::{Check, Status};

const NAME: &str = "package";

/// What the AMI says about the distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Distro {
    Al2023 {
        minimal: bool,
    },
    /// `None` when the release date is not in the name.
    Al2 {
        minimal: bool,
        build: Option<u32>,
    },
    AmazonLinux1,
    /// Major and minor version, when the name says.
    Ubuntu(Option<(u32, u32)>),
    Debian,
    Rhel,
    CentOs,
    Suse,
    MacOs,
    Windows,
    Unknown,
}

/// The first `major.minor` Ubuntu version in `text` (`22.04`).
fn ubuntu_version(text: &str) -> Option<(u32, u32)> {
    text.char_indices().find_map(|(i, _)| {
        if text[..i].ends_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        let (major, tail) = text[i..].split_once('.')?;
        if major.len() != 2 || !major.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let minor: String = tail.chars().take_while(char::is_ascii_digit).collect();
        if minor.len() != 2 {
            return None;
        }
        Some((major.parse().ok()?, minor.parse().ok()?))
    })
}

/// The `YYYYMMDD` of an Amazon Linux 2 name (`…-2.0.20190618-…`).
fn al2_build(text: &str) -> Option<u32> {
    let at = text.find("2.0.")?;
    let digits: String = text[at + 4..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (digits.len() == 8).then(|| digits.parse().ok()).flatten()
}

fn distro(image: &ImageFacts) -> Distro {
    let platform = image.platform_details.as_deref().unwrap_or_default();
    if platform.starts_with("Windows") {
        return Distro::Windows;
    }
    let text = format!(
        "{} {}",
        image.name.as_deref().unwrap_or_default(),
        image.description.as_deref().unwrap_or_default()
    )
    .to_ascii_lowercase();
    let minimal = text.contains("minimal");
    if platform.starts_with("Red Hat") || text.contains("rhel") || text.contains("red hat") {
        Distro::Rhel
    } else if platform.starts_with("SUSE") || text.contains("suse") || text.contains("sles") {
        Distro::Suse
    } else if platform.starts_with("Ubuntu") || text.contains("ubuntu") {
        Distro::Ubuntu(ubuntu_version(&text))
    } else if text.contains("macos") {
        Distro::MacOs
    } else if text.contains("al2023") || text.contains("amazon linux 2023") {
        Distro::Al2023 { minimal }
    } else if text.contains("amzn2") || text.contains("amazon linux 2") {
        Distro::Al2 {
            minimal,
            build: al2_build(&text),
        }
    } else if text.contains("amzn-ami") || text.contains("amazon linux ami") {
        Distro::AmazonLinux1
    } else if text.contains("bitnami") {
        Distro::Unknown
    } else if text.contains("debian") {
        Distro::Debian
    } else if text.contains("centos") {
        Distro::CentOs
    } else {
        Distro::Unknown
    }
}

const RPM_FIX: &str = "on the instance, install AWS's ec2-instance-connect and ec2-instance-connect-selinux RPMs as AWS's guide \"Install EC2 Instance Connect\" shows (source: github.com/aws/aws-ec2-instance-connect-config); or connect through Session Manager (--connect ssm)";

/// The `package` check from what DescribeImages said (pure). `found` is
/// the lookup: the image, `None` when not visible, or the error's text.
pub fn package_check(image_id: Option<&str>, found: &Result<Option<ImageFacts>, String>) -> Check {
    let unknown = |why: String| {
        Check::new(
            NAME,
            Status::Note,
            format!("{why}: cannot tell whether the EC2 Instance Connect package is installed"),
        )
    };
    let Some(image_id) = image_id else {
        return unknown("the instance has no AMI id".into());
    };
    let image = match found {
        Ok(Some(image)) => image,
        Ok(None) => return unknown(format!("{image_id} is not visible")),
        Err(err) => return unknown(format!("could not describe {image_id} ({err})")),
    };
    let ships = |what: &str| {
        Check::new(
            NAME,
            Status::Pass,
            format!("{what} AMIs ship the EC2 Instance Connect package ({image_id})"),
        )
    };
    let lacks = |what: &str, fix: &str| {
        Check::new(
            NAME,
            Status::Warn,
            format!(
                "{what} AMIs do not ship the EC2 Instance Connect package ({image_id}): pushed keys are refused unless it was installed since"
            ),
        )
        .fix(fix.to_owned())
    };
    match distro(image) {
        Distro::Al2023 { minimal: false } => ships("Amazon Linux 2023"),
        Distro::Al2023 { minimal: true } => lacks(
            "Amazon Linux 2023 minimal",
            "on the instance: sudo dnf install -y ec2-instance-connect",
        ),
        Distro::Al2 {
            minimal: false,
            build: Some(b),
        } if b >= 20190618 => ships("Amazon Linux 2 (2.0.20190618 and later)"),
        Distro::Al2 {
            minimal: false,
            build: None,
        } => Check::new(
            NAME,
            Status::Note,
            format!("Amazon Linux 2 AMIs from 2.0.20190618 ship the EC2 Instance Connect package; {image_id}'s release is not in its name"),
        )
        .fix("if logins are refused, on the instance: sudo yum install -y ec2-instance-connect"),
        Distro::Al2 { minimal, .. } => lacks(
            if minimal {
                "Amazon Linux 2 minimal"
            } else {
                "Amazon Linux 2 before 2.0.20190618"
            },
            "on the instance: sudo yum install -y ec2-instance-connect",
        ),
        Distro::AmazonLinux1 => lacks(
            "Amazon Linux (2018.03 and older)",
            "EC2 Instance Connect does not support this release: move to Amazon Linux 2023, or connect through Session Manager (--connect ssm)",
        ),
        Distro::Ubuntu(Some(v)) if v >= (20, 4) => ships(&format!("Ubuntu {}.{:02}", v.0, v.1)),
        Distro::Ubuntu(Some(v)) if v >= (16, 4) => lacks(
            &format!("Ubuntu {}.{:02}", v.0, v.1),
            "on the instance: sudo apt-get update && sudo apt-get install -y ec2-instance-connect",
        ),
        Distro::Ubuntu(Some(v)) => lacks(
            &format!("Ubuntu {}.{:02}", v.0, v.1),
            "EC2 Instance Connect needs Ubuntu 16.04 or later: connect through Session Manager (--connect ssm)",
        ),
        Distro::Ubuntu(None) => Check::new(
            NAME,
            Status::Note,
            format!("Ubuntu 20.04 and later ship the EC2 Instance Connect package; {image_id}'s release is not in its name"),
        )
        .fix("if logins are refused, on the instance: sudo apt-get update && sudo apt-get install -y ec2-instance-connect"),
        Distro::MacOs => ships("macOS"),
        Distro::Rhel => lacks("Red Hat Enterprise Linux", RPM_FIX),
        Distro::CentOs => lacks(
            "CentOS",
            &format!("AWS supports CentOS Stream 8 and 9: {RPM_FIX}"),
        ),
        Distro::Debian => lacks(
            "Debian",
            "AWS's guide does not list Debian; some Debian releases package it (sudo apt-get install -y ec2-instance-connect), which eic-connect has not verified; or connect through Session Manager (--connect ssm)",
        ),
        Distro::Suse => lacks(
            "SUSE Linux",
            "AWS publishes no EC2 Instance Connect package for SUSE: connect through Session Manager (--connect ssm), or with a key installed on the instance",
        ),
        Distro::Windows => Check::new(
            NAME,
            Status::Note,
            format!("{image_id} is a Windows AMI: EC2 Instance Connect pushes keys to Linux and macOS only"),
        )
        .fix("for RDP, open a tunnel to port 3389 through an endpoint: eic-connect tunnel TARGET 3389"),
        Distro::Unknown => unknown(format!("nothing in {image_id}'s name or description names a known distribution")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, description: &str, platform: &str) -> Result<Option<ImageFacts>, String> {
        Ok(Some(ImageFacts {
            image_id: "ami-1".into(),
            name: Some(name.into()),
            description: Some(description.into()),
            platform_details: Some(platform.into()),
            owner_alias: None,
        }))
    }

    fn status(name: &str, description: &str, platform: &str) -> (Status, Option<String>) {
        let c = package_check(Some("ami-1"), &image(name, description, platform));
        (c.status, c.fix)
    }

    #[test]
    fn which_amis_ship_the_package() {
        use Status::{Note, Pass, Warn};
        let linux = "Linux/UNIX";
        assert_eq!(
            status("al2023-ami-2023.3.20240205.2-kernel-6.1-x86_64", "", linux).0,
            Pass
        );
        let (s, fix) = status(
            "al2023-ami-minimal-2023.3.20240205.2-kernel-6.1-x86_64",
            "",
            linux,
        );
        assert_eq!(
            (s, fix.as_deref()),
            (
                Warn,
                Some("on the instance: sudo dnf install -y ec2-instance-connect")
            )
        );
        assert_eq!(
            status(
                "amzn2-ami-kernel-5.10-hvm-2.0.20240131.0-x86_64-gp2",
                "",
                linux
            )
            .0,
            Pass
        );
        assert_eq!(
            status("amzn2-ami-hvm-2.0.20190618-x86_64-gp2", "", linux).0,
            Pass
        );
        let (s, fix) = status("amzn2-ami-hvm-2.0.20190508-x86_64-gp2", "", linux);
        assert_eq!(
            (s, fix.unwrap().as_str()),
            (
                Warn,
                "on the instance: sudo yum install -y ec2-instance-connect"
            )
        );
        assert_eq!(
            status("amzn2-ami-minimal-hvm-2.0.20240131.0-x86_64-ebs", "", linux).0,
            Warn
        );
        assert_eq!(
            status("amzn-ami-hvm-2018.03.0.20231218.0-x86_64-gp2", "", linux).0,
            Warn
        );
        assert_eq!(
            status(
                "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20230516",
                "",
                linux
            )
            .0,
            Pass
        );
        let (s, fix) = status(
            "ubuntu/images/hvm-ssd/ubuntu-bionic-18.04-amd64-server-20230531",
            "",
            linux,
        );
        assert_eq!(s, Warn);
        assert!(
            fix.unwrap()
                .ends_with("sudo apt-get install -y ec2-instance-connect")
        );
        assert_eq!(status("my-ubuntu-image", "", linux).0, Note);
        assert_eq!(
            status(
                "RHEL-9.3.0_HVM-20240117-x86_64-49-Hourly2-GP3",
                "",
                "Red Hat Enterprise Linux"
            )
            .0,
            Warn
        );
        assert_eq!(
            status(
                "debian-12-amd64-20240102-1614",
                "Debian 12 (20240102-1614)",
                linux
            )
            .0,
            Warn
        );
        assert_eq!(
            status(
                "suse-sles-15-sp5-v20240129-hvm-ssd-x86_64",
                "",
                "SUSE Linux"
            )
            .0,
            Warn
        );
        assert_eq!(
            status("amzn-ec2-macos-14.3-20240129-060044-arm64", "", linux).0,
            Pass
        );
        assert_eq!(
            status("Windows_Server-2022-English-Full-Base", "", "Windows").0,
            Note
        );
        assert_eq!(
            status("bitnami-wordpress-6.4.3-debian-12", "", linux).0,
            Note
        );
        assert_eq!(status("golden-image-42", "", linux).0, Note);
        let c = package_check(Some("ami-1"), &Ok(None));
        assert_eq!(c.status, Note);
        let c = package_check(Some("ami-1"), &Err("not authorized".into()));
        assert_eq!(c.status, Note);
        assert!(c.detail.contains("not authorized"));
    }

    #[test]
    fn ubuntu_versions() {
        assert_eq!(ubuntu_version("ubuntu-jammy-22.04-amd64"), Some((22, 4)));
        assert_eq!(ubuntu_version("ubuntu 16.04 lts"), Some((16, 4)));
        assert_eq!(
            ubuntu_version("ubuntu-noble-24.04-amd64-server-20240423"),
            Some((24, 4))
        );
        assert_eq!(ubuntu_version("nothing"), None);
        assert_eq!(
            al2_build("amzn2-ami-hvm-2.0.20190618-x86_64"),
            Some(20190618)
        );
    }
}
