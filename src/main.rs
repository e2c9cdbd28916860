//! eic-connect: SSH to EC2 instances with EC2 Instance Connect.

fn main() -> std::process::ExitCode {
    eic_connect::main()
}
