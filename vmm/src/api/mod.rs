//! The control socket: line-delimited JSON over a Unix socket, one request and one response
//! per line. `hostd` and `vmm ctl` drive VMs only through it.
pub mod client;
pub mod hold;
pub mod protocol;
pub mod server;
