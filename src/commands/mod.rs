//! One module per subcommand.

pub mod audit;
pub mod connect;
pub mod console;
pub mod copy;
pub mod doctor;
pub mod endpoint;
pub mod known_hosts;
pub mod list;
pub mod policy;
pub mod proxy;
pub mod reuse;
pub mod run;
pub mod serial;
pub mod ssh_config;
pub mod tunnel;
