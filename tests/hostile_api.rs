//! End to end: an API answer that is not what EC2 sends is refused before
//! anything is done with it.

mod support;

use support::cmd::{assert_signed, eic, files_under, run, stderr, stdout};

use std::process::{Command, Stdio};

use support::{InstanceSpec, TestBed};

/// An instance id that would add a line of its own to a known_hosts file.
const HOSTILE_ID: &str =
    "i-0123456789abcdef0\n@cert-authority * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostile";

/// How the sanitised id appears in the error message.
const SHOWN_ID: &str =
    "\"i-0123456789abcdef0\\n@cert-authority * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostile\"";

/// The command failed with the clear error, changed nothing, and left no
/// trace of the id in eic-connect's state.
#[track_caller]
fn assert_refused(bed: &TestBed, what: &str, out: &std::process::Output) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(255), "{what}: {err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("eic-connect: error: ")
            && first.contains("instance id eic-connect does not understand")
            && first.ends_with(SHOWN_ID),
        "{what}: {err}"
    );
    assert!(
        err.lines().any(|l| l.starts_with("hint: ")),
        "{what}: {err}"
    );
    assert!(!err.contains("\n@cert-authority"), "{what}: {err}");
    assert!(stdout(out).is_empty(), "{what}: {}", stdout(out));
    assert!(bed.pushes().is_empty(), "{what}: a key was pushed");

    let state = bed.home().join(".local/state/eic-connect");
    let known_hosts = state.join("known_hosts");
    let recorded = std::fs::read_to_string(&known_hosts).unwrap_or_default();
    assert!(
        recorded.is_empty(),
        "{what}: known_hosts holds {recorded:?}"
    );
    for file in files_under(&state) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        assert!(
            !text.contains("cert-authority") && !text.contains("i-0123456789abcdef0"),
            "{what}: {} holds {text:?}",
            file.display()
        );
    }
    assert_signed(bed);
}

#[test]
fn an_instance_id_that_is_not_one_is_refused() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1").id(HOSTILE_ID));

    let mut c = eic(&bed);
    c.args(["web-1", "echo should-not-run"]);
    assert_refused(&bed, "connect", &run(c));

    for args in [&["list"][..], &["list", "--json"], &["list", "web-1"]] {
        let mut c = bed.command();
        c.args(args).stdin(Stdio::null());
        assert_refused(&bed, &args.join(" "), &run(c));
    }

    let mut c: Command = bed.command();
    c.args(["run", "-f", "web-1", "-p", &bed.sshd_port().to_string()])
        .args(["-l", &bed.os_user(), "--", "echo should-not-run"])
        .stdin(Stdio::null());
    assert_refused(&bed, "run", &run(c));
}

#[test]
fn one_bad_instance_spoils_the_whole_answer() {
    let bed = TestBed::start();
    let good = bed.add_instance(InstanceSpec::named("web-1"));
    bed.add_instance(InstanceSpec::named("web-2").id(HOSTILE_ID));

    // web-1 alone would do, but the answer it comes in is not trusted.
    let mut c = eic(&bed);
    c.args(["web-*", "echo should-not-run"]);
    assert_refused(&bed, "connect web-*", &run(c));
    let mut c = bed.command();
    c.args(["list", "--json", "web-*"]).stdin(Stdio::null());
    assert_refused(&bed, "list --json web-*", &run(c));

    // Asked by its own id, the good instance is found on its own.
    let mut c = eic(&bed);
    c.args([&good.id, "echo reached"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "reached\n");
}
