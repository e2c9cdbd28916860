//! `eic-connect tunnel`: a byte stream to an instance's port through an EC2
//! Instance Connect Endpoint.

use std::process::ExitCode;

use crate::cli::{AwsArgs, PathArgs, TunnelArgs};

pub async fn run(args: TunnelArgs, aws: AwsArgs, path: PathArgs) -> anyhow::Result<ExitCode> {
    let _ = (args, aws, path);
    anyhow::bail!("tunnel is not implemented yet")
}
