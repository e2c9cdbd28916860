//! The command line in ssh's grammar, resolved into settings, and ssh's
//! arguments built from it: no panic, and the destination always follows
//! `--` (so nothing the user typed becomes an ssh option by accident).
#![no_main]

use std::path::Path;

use eic_connect::session::{HostKeys, Spec, ssh_args};
use eic_connect::settings::{Command, Layers, resolve};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static COMMAND: std::cell::RefCell<clap::Command> =
        std::cell::RefCell::new(eic_connect::cli::command());
}

fuzz_target!(|data: &[u8]| {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<std::ffi::OsString> = std::iter::once(std::ffi::OsStr::new("eic-connect"))
        .chain(data.split(|&b| b == 0).map(std::ffi::OsStr::from_bytes))
        .map(ToOwned::to_owned)
        .collect();
    // Building clap's command is most of the work of a parse: it is built
    // once and reused (`cli::parse` builds it afresh; the unit test
    // `a_reused_command_parses_as_a_fresh_one` holds the two equal).
    let parsed = COMMAND.with_borrow_mut(|command| eic_connect::cli::parse_with(command, args));
    let Ok(cli) = parsed else {
        return;
    };
    let Ok(Command::Connect(connect)) = resolve(cli, &Layers::default()) else {
        return;
    };
    let host = connect.target.host_text();
    let spec = Spec {
        user_options: &connect.ssh_options,
        path_options: Vec::new(),
        verbose: connect.verbose,
        os_user: &connect.user.name,
        host_key_alias: "i-0123456789abcdef0",
        host: &host,
        host_keys: HostKeys::FirstUse {
            known_hosts: "/k/known_hosts".into(),
        },
        command: &connect.command,
    };
    let Ok(args) = ssh_args(
        &spec,
        Path::new("/r/id.pub"),
        Path::new("/r/a.sock"),
        Path::new("/r/h"),
    ) else {
        return;
    };
    // `-- HOST` ends the arguments, or `-- HOST COMMAND` (the command is
    // one word, which may itself be "--").
    let host_at = if connect.command.is_empty() {
        args.len() - 1
    } else {
        args.len() - 2
    };
    assert_eq!(
        args.get(host_at).map(|a| a.as_os_str()),
        Some(std::ffi::OsStr::new(&host)),
        "the host is last or next to last: {args:?}"
    );
    assert_eq!(
        args.get(host_at - 1).map(|a| a.as_os_str()),
        Some(std::ffi::OsStr::new("--")),
        "the host follows --: {args:?}"
    );
    let _ = eic_connect::ssh::port(&connect.ssh_options);
});
