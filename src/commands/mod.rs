//! One module per subcommand.

pub mod connect;
