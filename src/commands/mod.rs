//! One module per subcommand.

pub mod connect;
pub mod tunnel;
