//! Shell completions and the man page, generated from the same command
//! definition that parses the command line, so they cannot drift from it.

use std::io::Write;

use crate::cli::Generate;

/// Writes what `--generate` asks for to standard output.
pub fn run(what: Generate) -> anyhow::Result<std::process::ExitCode> {
    let mut out = Vec::new();
    let mut cmd = crate::cli::command();
    match what {
        Generate::Bash => clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut cmd,
            "eic-connect",
            &mut out,
        ),
        Generate::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "eic-connect", &mut out)
        }
        Generate::Fish => clap_complete::generate(
            clap_complete::Shell::Fish,
            &mut cmd,
            "eic-connect",
            &mut out,
        ),
        Generate::Man => man_page(cmd, &mut out)?,
    }
    crate::error::print_stdout(&String::from_utf8_lossy(&out))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// One man page: clap's sections (name, synopsis, options), every command
/// with its own options, then what clap does not know: configuration,
/// environment, files, exit status.
fn man_page(mut cmd: clap::Command, out: &mut Vec<u8>) -> anyhow::Result<()> {
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    out.write_all(b".SH COMMANDS\n")?;
    for sub in cmd
        .get_subcommands_mut()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let usage = sub.render_usage().to_string();
        writeln!(
            out,
            ".SS {}",
            roff_text(usage.trim_start_matches("Usage: "))
        )?;
        if let Some(about) = sub.get_about() {
            writeln!(out, "{}", roff_text(&about.to_string()))?;
        }
        for arg in sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set() && a.get_id() != "help")
        {
            let mut names: Vec<String> = Vec::new();
            if let Some(short) = arg.get_short() {
                names.push(format!("-{short}"));
            }
            if let Some(long) = arg.get_long() {
                names.push(format!("--{long}"));
            }
            if names.is_empty() {
                continue;
            }
            let value = match arg.get_value_names() {
                Some(v) if arg.get_action().takes_values() => format!(" {}", v.join(" ")),
                _ => String::new(),
            };
            writeln!(
                out,
                ".TP\n\\fB{}\\fR{}",
                roff_text(&names.join(", ")),
                roff_text(&value)
            )?;
            if let Some(help) = arg.get_help() {
                writeln!(out, "{}", roff_text(&help.to_string()))?;
            }
        }
        if let Some(after) = sub.get_after_help() {
            writeln!(out, ".PP\n{}", roff_text(&after.to_string()))?;
        }
    }
    out.write_all(EXTRA_SECTIONS.as_bytes())?;
    man.render_version_section(out)?;
    Ok(())
}

/// Text made safe for roff: backslashes and hyphens escaped, no line
/// starting with a control character.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const EXTRA_SECTIONS: &str = r#".SH CONFIGURATION
Defaults are read from
.I $XDG_CONFIG_HOME/eic-connect/config.toml
(else
.IR ~/.config/eic-connect/config.toml ;
.B EIC_CONNECT_CONFIG
names another file, or none when empty).
Keys: region, profile, user, address (auto, public, private, ipv6),
connect (auto, direct, eice), eice\-id, max\-tunnel\-duration,
api\-timeout, verify\-host\-key.
A table [alias.NAME] with target = "..." and any of those keys names an
instance: eic\-connect NAME.
.PP
Precedence, highest first: the command line; the alias; the environment
(EIC_CONNECT_*); the config file; AWS's own defaults (AWS_REGION,
AWS_PROFILE, ~/.aws/config).
.SH ENVIRONMENT
.TP
.B EIC_CONNECT_REGION, EIC_CONNECT_PROFILE, EIC_CONNECT_OS_USER, EIC_CONNECT_ADDRESS
Defaults for \-\-region, \-\-profile, \-\-os\-user and the address choice.
.TP
.B EIC_CONNECT_PATH, EIC_CONNECT_EICE_ID, EIC_CONNECT_MAX_TUNNEL_DURATION
Defaults for \-\-connect, \-\-eice\-id and \-\-max\-tunnel\-duration.
.TP
.B EIC_CONNECT_API_TIMEOUT, EIC_CONNECT_VERIFY_HOST_KEY, EIC_CONNECT_ALLOW_UNVERIFIED
Defaults for \-\-api\-timeout, \-\-verify\-host\-key and \-\-allow\-unverified.
.TP
.B EIC_CONNECT_SSH
The ssh program to run (default: ssh on PATH).
.TP
.B AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL, AWS_MAX_ATTEMPTS, HTTPS_PROXY, AWS_CA_BUNDLE
The standard AWS settings.
.SH FILES
.TP
.I ~/.local/state/eic\-connect/known_hosts
Host keys, recorded under instance ids ($XDG_STATE_HOME if set).
.TP
.I ~/.config/eic\-connect/config.toml
Defaults and aliases.
.SH EXIT STATUS
The remote command's status when ssh ran it (128+N if ssh died of signal
N); 255 when eic\-connect or ssh could not connect; 2 for usage and
configuration errors.
.B run
exits 0 when the command succeeded on every instance, 1 otherwise, 130
when interrupted.
"#;
