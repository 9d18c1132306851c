//! Helpers shared by Laundromat's end-to-end tests and benchmark harnesses: where the workspace,
//! the binaries and the guest images are, child processes that are bounded in time and killed
//! when dropped, summary statistics, and readers for a process's memory use.

pub mod machine;
pub mod process;
pub mod smaps;
pub mod stats;
pub mod workspace;
