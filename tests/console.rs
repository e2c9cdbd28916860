//! `eic-connect console`, end to end: the URL of the AWS console's
//! browser-based EC2 Instance Connect page, printed only when the browser
//! client can reach the instance (running, a public IPv4 address, port 22
//! open to the region's EC2 Instance Connect prefix list), and `--open`
//! with a recording stand-in for xdg-open.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use support::cmd::{assert_signed, run, stderr, stdout};
use support::diag::SgRule;
use support::{InstanceSpec, TestBed};

fn console(bed: &TestBed, args: &[&str]) -> Output {
    let mut c = bed.command();
    c.arg("console").args(args).stdin(Stdio::null());
    run(c)
}

/// The bed's group admits port 22 from the console's prefix list only.
fn open_to_console(bed: &TestBed) {
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(22, 22).allow_prefix_list(bed.console_prefix_list_id())],
    );
}

fn expected_url(bed: &TestBed, id: &str, user: &str) -> String {
    let r = bed.region();
    format!(
        "https://{r}.console.aws.amazon.com/ec2-instance-connect/ssh?region={r}&connType=standard&instanceId={id}&osUser={user}&sshPort=22"
    )
}

#[test]
fn prints_the_url_for_a_public_instance_open_to_the_prefix_list() {
    let bed = TestBed::start();
    let ami = bed.register_ubuntu_image();
    let web = bed.add_instance(InstanceSpec::named("web-1").image_id(ami));
    open_to_console(&bed);
    let out = console(&bed, &["web-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The OS user is guessed from the AMI, as for connecting.
    assert_eq!(stdout(&out), expected_url(&bed, &web.id, "ubuntu") + "\n");
    // -l wins, and values are percent-encoded.
    let out = console(&bed, &["web-1", "-l", "deploy.user_1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        expected_url(&bed, &web.id, "deploy.user_1") + "\n"
    );
    assert!(bed.requests_for("DescribeManagedPrefixLists").len() >= 2);
    assert_signed(&bed);
}

#[test]
fn a_private_instance_is_refused_with_the_way_that_works() {
    let bed = TestBed::start();
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    open_to_console(&bed);
    let out = console(&bed, &["db-1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(
        err.contains(&format!("instance {} has no public IPv4 address", db.id)),
        "{err}"
    );
    assert!(err.contains(&format!("`eic-connect {}`", db.id)), "{err}");
    assert!(err.contains("Session Manager"), "{err}");
}

#[test]
fn a_missing_rule_is_refused_with_the_command_that_adds_it() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(22, 22).allow_cidr("203.0.113.0/24")],
    );
    let out = console(&bed, &["web-1", "-l", "ec2-user"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(stdout(&out).is_empty());
    assert!(err.contains("open port 22 only to 203.0.113.0/24"), "{err}");
    assert!(
        err.contains(&format!(
            "aws ec2 authorize-security-group-ingress --group-id {} --ip-permissions 'IpProtocol=tcp,FromPort=22,ToPort=22,PrefixListIds=[{{PrefixListId={}}}]'",
            bed.security_group_id(),
            bed.console_prefix_list_id()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "com.amazonaws.{}.ec2-instance-connect",
            bed.region()
        )),
        "{err}"
    );
    // --force prints it anyway, with a warning.
    let out = console(&bed, &["web-1", "-l", "ec2-user", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), expected_url(&bed, &web.id, "ec2-user") + "\n");
    assert!(stderr(&out).contains("warning:"), "{}", stderr(&out));
    // A block that covers the prefix list's addresses is enough.
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(22, 22).allow_cidr("18.206.0.0/16")],
    );
    let out = console(&bed, &["web-1", "-l", "ec2-user"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), expected_url(&bed, &web.id, "ec2-user") + "\n");
    let entries = bed.requests_for("GetManagedPrefixListEntries");
    assert_eq!(
        entries
            .last()
            .and_then(|c| c.params.get("PrefixListId"))
            .map(String::as_str),
        Some(bed.console_prefix_list_id())
    );
    // One that covers part of it is not.
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(22, 22).allow_cidr("18.206.107.24/30")],
    );
    let out = console(&bed, &["web-1", "-l", "ec2-user"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    // Port 22 open to any address is enough.
    bed.set_security_group(
        &bed.security_group_id(),
        vec![SgRule::tcp(0, 65535).allow_cidr("0.0.0.0/0")],
    );
    let out = console(&bed, &["web-1", "-l", "ec2-user"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_stopped_instance_is_refused() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1").state("stopped"));
    open_to_console(&bed);
    let out = console(&bed, &["web-1", "-l", "ec2-user"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(stderr(&out).contains("stopped"), "{}", stderr(&out));
}

/// A directory holding a stand-in `xdg-open` (and `open`) that writes its
/// arguments, one per line, to `argv.txt` next to it.
fn recording_opener(dir: &Path) -> PathBuf {
    let bin = dir.join("opener-bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let log = bin.join("argv.txt");
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done >> '{}'\n",
        log.display()
    );
    for name in ["xdg-open", "open"] {
        let p = bin.join(name);
        std::fs::write(&p, &script).expect("write opener");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    bin
}

#[test]
fn open_hands_the_url_to_the_desktop_opener_as_one_argument() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    open_to_console(&bed);
    let bin = recording_opener(bed.dir());
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let mut c = bed.command();
    c.args(["console", "web-1", "-l", "ec2-user", "--open"])
        .env("PATH", &path)
        .stdin(Stdio::null());
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let url = expected_url(&bed, &web.id, "ec2-user");
    assert_eq!(stdout(&out), format!("{url}\n"));
    let argv = std::fs::read_to_string(bin.join("argv.txt")).expect("the opener ran");
    assert_eq!(argv, format!("{url}\n"), "one argument, the URL");

    // No opener on PATH: the URL is printed and that is said.
    let empty = bed.dir().join("empty-bin");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let mut c = bed.command();
    c.args(["console", "web-1", "-l", "ec2-user", "--open"])
        .env("PATH", &empty)
        .stdin(Stdio::null());
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{url}\n"));
    assert!(
        stderr(&out).contains("open the URL above yourself"),
        "{}",
        stderr(&out)
    );

    // Refused: the opener is not run.
    bed.set_security_group(&bed.security_group_id(), vec![]);
    std::fs::remove_file(bin.join("argv.txt")).expect("rm");
    let mut c = bed.command();
    c.args(["console", "web-1", "-l", "ec2-user", "--open"])
        .env("PATH", &path)
        .stdin(Stdio::null());
    let out = run(c);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(
        !bin.join("argv.txt").exists(),
        "the opener ran for a refused instance"
    );
}

#[test]
fn hostile_names_and_users_are_refused_or_encoded() {
    let bed = TestBed::start();
    let web =
        bed.add_instance(InstanceSpec::named("web\x1b]0;x\x07-1").tag("Owner", "\x1b[2Jroot"));
    open_to_console(&bed);
    let out = console(&bed, &[&web.id, "-l", "ec2-user"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    // Hostile values in the rules are shown escaped in the refusal.
    bed.set_security_group(
        &bed.security_group_id(),
        vec![
            SgRule::tcp(22, 22)
                .allow_cidr("10.0.0.0/8\x1b]0;owned\x07")
                .allow_group("sg-\x1b[2J"),
        ],
    );
    let out = console(&bed, &[&web.id, "-l", "ec2-user"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    assert!(err.contains("group sg-\\u{1b}[2J"), "{err}");
    // A user that is not a valid login name never reaches a URL.
    let out = console(&bed, &[&web.id, "-l", "a&b=c"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}
