//! EC2 Instance Connect Endpoints: finding the endpoint and presigning a
//! tunnel's URL (`endpoint`), the WebSocket tunnel and the HTTP proxy it may
//! go through (`relay`), and whether a connection takes a tunnel at all
//! (`route`).

pub mod admin;
pub mod endpoint;
pub mod relay;
pub mod route;

pub use route::{ConnectVia, PathSettings};
