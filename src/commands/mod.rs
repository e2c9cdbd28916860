//! One module per subcommand.

pub mod connect;
pub mod copy;
pub mod doctor;
pub mod known_hosts;
pub mod list;
pub mod proxy;
pub mod reuse;
pub mod run;
pub mod serial;
pub mod ssh_config;
pub mod tunnel;
