//! The config file, EIC_CONNECT_* variables and aliases, end to end:
//! command line > alias > environment > config file > AWS's defaults.

mod support;

use std::process::Command;

use support::cmd::{assert_signed, eic, run, server_address, stderr, stdout};
use support::{InstanceSpec, TestBed};

fn write_config(bed: &TestBed, text: &str) -> std::path::PathBuf {
    let dir = bed.home().join(".config/eic-connect");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `--dry-run` output for a command line (no API call is made).
fn dry_run(bed: &TestBed, env: &[(&str, &str)], args: &[&str]) -> String {
    let mut c = bed.command();
    c.envs(env.iter().copied()).arg("--dry-run").args(args);
    let out = run(c);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn each_layer_overrides_the_ones_below() {
    let bed = TestBed::start();
    write_config(&bed, "region = \"eu-west-3\"\nuser = \"filer\"\n");
    // The bed exports AWS_REGION=us-east-1: the config file outranks it.
    let text = dry_run(&bed, &[], &["web-1"]);
    assert!(text.starts_with("# dry run (region eu-west-3)"), "{text}");
    assert!(text.contains("InstanceOSUser=filer"), "{text}");
    assert!(
        !text.contains("DescribeImages"),
        "a configured user is not guessed: {text}"
    );

    let env = [
        ("EIC_CONNECT_REGION", "ap-south-1"),
        ("EIC_CONNECT_OS_USER", "envy"),
    ];
    let text = dry_run(&bed, &env, &["web-1"]);
    assert!(text.starts_with("# dry run (region ap-south-1)"), "{text}");
    assert!(text.contains("InstanceOSUser=envy"), "{text}");

    let text = dry_run(&bed, &env, &["--region", "sa-east-1", "-l", "cli", "web-1"]);
    assert!(text.starts_with("# dry run (region sa-east-1)"), "{text}");
    assert!(text.contains("InstanceOSUser=cli"), "{text}");
    // USER@ is the command line too, and never conflicts with a default.
    let text = dry_run(&bed, &env, &["admin@web-1"]);
    assert!(text.contains("InstanceOSUser=admin"), "{text}");

    // Nothing anywhere: AWS's own chain (AWS_REGION) decides.
    std::fs::remove_file(bed.home().join(".config/eic-connect/config.toml")).unwrap();
    let text = dry_run(&bed, &[], &["web-1"]);
    assert!(text.starts_with("# dry run (region us-east-1)"), "{text}");
    assert!(text.contains("DescribeImages"), "{text}");
    assert!(bed.requests().is_empty(), "dry runs call nothing");
}

#[test]
fn an_alias_names_an_instance_with_its_own_settings() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1"));
    // The file's region would fail the bed's signature check; the alias's
    // region (the bed's) must win, and its user must be used.
    write_config(
        &bed,
        &format!(
            "region = \"eu-west-3\"\naddress = \"private\"\n\n[alias.box]\ntarget = \"{}\"\nregion = \"us-east-1\"\nuser = \"{}\"\n",
            web.id,
            bed.os_user()
        ),
    );
    let mut c = bed.command();
    c.args([
        "-p",
        &bed.sshd_port().to_string(),
        "box",
        "echo $SSH_CONNECTION",
    ]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    // address = "private" from the file applies under the alias.
    let server = server_address(&out);
    assert_eq!(server, web.private_ip);
    let pushes = bed.pushes();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].instance_id, web.id);
    assert_eq!(pushes[0].os_user, bed.os_user());
    assert_signed(&bed);

    // The command line still beats the alias.
    let mut c = eic(&bed);
    c.args(["--public", "box", "echo $SSH_CONNECTION"]);
    let out = run(c);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let server = server_address(&out);
    assert_eq!(Some(server), web.public_ip);
}

#[test]
fn a_broken_config_is_refused_before_anything_is_sent() {
    let bed = TestBed::start();
    bed.add_instance(InstanceSpec::named("web-1"));
    for (text, needle) in [
        ("regoin = \"eu-west-1\"\n", "regoin"),
        ("connect = \"teleport\"\n", "teleport"),
        ("user = \"root; rm -rf /\"\n", "not a valid OS user"),
        ("[alias.x]\nuser = \"a\"\n", "target"),
        ("region = [\n", "invalid config file"),
    ] {
        let path = write_config(&bed, text);
        let mut c = eic(&bed);
        c.args(["web-1", "true"]);
        let out = run(c);
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.starts_with("eic-connect: error: "), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(needle), "{text}: {err}");
    }
    let mut c = eic(&bed);
    c.env("EIC_CONNECT_PATH", "carrier-pigeon")
        .args(["web-1", "true"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("EIC_CONNECT_"), "{}", stderr(&out));
    assert!(bed.requests().is_empty(), "nothing reached AWS");

    // EIC_CONNECT_CONFIG="" means: no config file at all.
    let mut c = eic(&bed);
    c.env("EIC_CONNECT_CONFIG", "").args(["web-1", "true"]);
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn completions_and_man_page_come_from_the_command_definition() {
    let bed = TestBed::start();
    let generate = |what: &str| {
        let mut c = bed.command();
        c.args(["--generate", what]);
        let out = run(c);
        assert!(out.status.success(), "{what}: {}", stderr(&out));
        stdout(&out)
    };
    let bash = generate("bash");
    let file = bed.dir().join("eic-connect.bash");
    std::fs::write(&file, &bash).unwrap();
    // bash itself loads it and registers the completion.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p eic-connect && COMP_WORDS=(eic-connect li); COMP_CWORD=1; COMP_LINE='eic-connect li'; COMP_POINT=14; _eic__connect eic-connect li eic-connect && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("-F _eic__connect eic-connect"), "{text}");
    assert!(text.lines().any(|l| l == "list"), "completing `li`: {text}");

    let zsh = generate("zsh");
    assert!(zsh.starts_with("#compdef eic-connect"), "{zsh}");
    for sub in ["list", "run", "doctor", "--verify-host-key", "--start"] {
        assert!(zsh.contains(sub), "zsh lacks {sub}");
    }
    let fish = generate("fish");
    assert!(fish.contains("complete -c eic-connect"), "{fish}");
    assert!(
        fish.contains("__fish_eic_connect_using_subcommand run\" -s f -l filter"),
        "{fish}"
    );

    let man = generate("man");
    assert!(man.contains(".TH eic-connect 1"), "{man}");
    for section in [
        ".SH SYNOPSIS",
        ".SH OPTIONS",
        ".SH COMMANDS",
        ".SH CONFIGURATION",
        ".SH ENVIRONMENT",
        ".SH EXIT STATUS",
    ] {
        assert!(man.contains(section), "man page lacks {section}");
    }
    assert!(man.contains(".SS eic\\-connect run"), "{man}");
    assert!(man.contains("\\fB\\-f, \\-\\-filter\\fR FILTER"), "{man}");

    // It needs no config file, even a broken one.
    write_config(&bed, "this is not toml");
    assert!(generate("man").contains(".SH COMMANDS"));

    // --generate stands alone.
    let mut c = bed.command();
    c.args(["--generate", "bash", "web-1"]);
    assert_eq!(run(c).status.code(), Some(2));
}

#[test]
fn ssh_config_does_not_freeze_the_config_files_settings() {
    let bed = TestBed::start();
    write_config(&bed, "region = \"eu-west-3\"\nconnect = \"eice\"\n");
    let mut c = bed.command();
    c.arg("ssh-config");
    let out = run(c);
    assert!(out.status.success(), "{}", stderr(&out));
    let block = stdout(&out);
    // The proxy reads the config file itself, each time it runs.
    assert!(
        !block.contains("eu-west-3") && !block.contains("--connect"),
        "{block}"
    );
    let mut c = bed.command();
    c.args(["--region", "ap-south-1", "ssh-config"]);
    let out = run(c);
    assert!(
        stdout(&out).contains("--region ap-south-1"),
        "{}",
        stdout(&out)
    );
}
