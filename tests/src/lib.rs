//! Helpers shared by Laundromat's end-to-end tests and benchmark harnesses: where the workspace,
//! the binaries and the guest images are, child processes that are bounded in time and killed
//! when dropped, summary statistics, and readers for a process's memory use.

pub mod bench_agent_vms;
pub mod bench_files;
pub mod bench_idle;
pub mod bench_limits;
pub mod bench_migration;
pub mod bench_peers;
pub mod bench_restore;
pub mod bench_tls;
pub mod disk_image;
pub mod host_keys;
pub mod http_client;
pub mod machine;
pub mod netns;
pub mod packet_series;
pub mod plot;
pub mod process;
pub mod qemu_tls;
pub mod qmp;
pub mod smaps;
pub mod stats;
pub mod switchover;
pub mod workspace;
