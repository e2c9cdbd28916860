//! `eic-connect ssh-config`: a block for `~/.ssh/config` that makes plain
//! `ssh i-0abc…`, `scp`, `sftp`, `rsync -e ssh`, git and editors' remote-SSH
//! reach instances through `eic-connect proxy`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{AwsArgs, PathArgs, SshConfigArgs, global_args};
use crate::commands::proxy::default_key_dir;
use crate::error::{Failure, fail};
use crate::ssh::shell_quote;
use crate::target::validate_user;

pub fn run(args: &SshConfigArgs, aws: &AwsArgs, path: &PathArgs) -> anyhow::Result<ExitCode> {
    validate_user(&args.os_user)?;
    let prefix_ok = !args.prefix.is_empty()
        && args
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !prefix_ok {
        return fail(Failure::usage(format!(
            "--prefix {:?}: use letters, digits, '-', '_' or '.'",
            args.prefix
        )));
    }
    let exe = std::env::current_exe().context("cannot find eic-connect's own path")?;
    // The block names eic-connect's known_hosts file; its directory must
    // exist for ssh to record host keys there.
    let known_hosts = crate::commands::connect::known_hosts_file(&crate::settings::state_dir())?;
    let block = render(
        &exe,
        &default_key_dir(),
        &known_hosts,
        args,
        &global_args(aws, path),
    );
    crate::error::print_stdout(&block)?;
    Ok(ExitCode::SUCCESS)
}

/// The config block. Paths are absolute, so it works whatever the
/// environment of the program running ssh.
pub fn render(
    exe: &Path,
    key_dir: &Path,
    known_hosts: &Path,
    args: &SshConfigArgs,
    globals: &[String],
) -> String {
    let quote = |s: &str| String::from_utf8_lossy(&shell_quote(s.as_bytes())).into_owned();
    let mut proxy: Vec<String> = vec![quote(&exe.to_string_lossy()), "proxy".into()];
    proxy.extend(globals.iter().map(|g| quote(g)));
    proxy.extend([
        "--prefix".into(),
        quote(&args.prefix),
        "--key-dir".into(),
        quote(&key_dir.to_string_lossy()),
        "%h %p %r".into(),
    ]);
    let config_path = |p: &Path| {
        let s = p.to_string_lossy();
        if s.contains(char::is_whitespace) {
            format!("\"{s}\"")
        } else {
            s.into_owned()
        }
    };
    format!(
        "# eic-connect: reach EC2 instances by id (ssh i-0abc…) or by Name tag\n\
         # with the prefix (ssh {prefix}web-1). Keys are pushed per connection by\n\
         # EC2 Instance Connect and live at most 60 seconds.\n\
         Host i-* {prefix}*\n    \
             User {user}\n    \
             ProxyCommand {proxy}\n    \
             IdentityFile {identity}\n    \
             UserKnownHostsFile {known_hosts}\n    \
             StrictHostKeyChecking accept-new\n",
        prefix = args.prefix,
        user = args.os_user,
        proxy = proxy.join(" "),
        identity = config_path(&key_dir.join("%h-%r")),
        known_hosts = config_path(known_hosts),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_block_with_quoted_paths() {
        let args = SshConfigArgs {
            prefix: "eic-".into(),
            os_user: "ubuntu".into(),
        };
        let block = render(
            Path::new("/opt/my tools/eic-connect"),
            Path::new("/run/user/1000/eic-connect-proxy"),
            Path::new("/home/u/.local/state/eic-connect/known_hosts"),
            &args,
            &["--region".into(), "eu-west-1".into()],
        );
        assert_eq!(
            block.lines().skip(3).collect::<Vec<_>>(),
            [
                "Host i-* eic-*",
                "    User ubuntu",
                "    ProxyCommand '/opt/my tools/eic-connect' proxy --region eu-west-1 --prefix eic- --key-dir /run/user/1000/eic-connect-proxy %h %p %r",
                "    IdentityFile /run/user/1000/eic-connect-proxy/%h-%r",
                "    UserKnownHostsFile /home/u/.local/state/eic-connect/known_hosts",
                "    StrictHostKeyChecking accept-new",
            ]
        );
    }
}
