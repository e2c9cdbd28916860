//! Run the integration-test bed by hand: `cargo run --example testbed`.
//!
//! Starts the AWS API stand-in and the sshd "instances" with a few sample
//! instances, prints the environment to paste into another shell, and runs
//! until Ctrl-C. Then it stops sshd and removes its temp dir.

#[path = "../tests/support/mod.rs"]
mod support;

use support::{InstanceSpec, TestBed};

fn main() {
    let bed = TestBed::start();
    let web = bed.add_instance(InstanceSpec::named("web-1").tag("env", "dev"));
    let db = bed.add_instance(InstanceSpec::named("db-1").public_ip(false));
    let old = bed.add_instance(InstanceSpec::named("old-1").state("stopped"));

    println!("eic-connect test bed is up.\n");
    println!("Instances:");
    for i in [&web, &db, &old] {
        println!(
            "  {:<6} {}  {:<8} private {:<10} public {}",
            i.name.as_deref().unwrap_or("-"),
            i.id,
            i.state,
            i.private_ip,
            i.public_ip.as_deref().unwrap_or("-"),
        );
    }
    println!("\nPaste into another shell:\n");
    print!("{}", bed.env_exports());
    println!("export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null");
    println!();
    println!(
        "sshd listens on port {} on every instance address: pass `-p {}` to eic-connect.",
        bed.sshd_port(),
        bed.sshd_port()
    );
    println!(
        "Only OS user `{}` can log in. Pushed keys live 60 s.",
        bed.os_user()
    );
    let (port, user) = (bed.sshd_port(), bed.os_user());
    println!("Examples: eic-connect -p {port} {user}@web-1");
    println!("          eic-connect -p {port} --start {user}@old-1 uptime");
    println!("          eic-connect list");
    println!("          eic-connect run -f state=running -p {port} -l {user} -- hostname");
    println!("\nBed dir: {}  (sshd log: sshd.log)", bed.dir().display());
    println!("Ctrl-C to stop.");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut last = 0;
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {
                    // Echo API calls as they arrive, to see what the tool does.
                    let calls = bed.requests();
                    for c in &calls[last..] {
                        let outcome = match (&c.error_code, &c.auth_error) {
                            (_, Some(a)) => format!("AUTH FAILED: {a}"),
                            (Some(code), None) => format!("-> {} {code}", c.status),
                            (None, None) => format!("-> {}", c.status),
                        };
                        println!("[api] {} {outcome}", c.action);
                    }
                    last = calls.len();
                }
            }
        }
    });
    println!("\nStopping.");
    drop(bed);
}
