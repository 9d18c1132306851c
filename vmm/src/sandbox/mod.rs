//! The sandbox around a running VM: per-thread seccomp filters (`seccomp`) and the jail
//! (`jail`): namespaces, a minimal root, an unprivileged uid, no capabilities, rlimits and a
//! cgroup. Together they bound what a guest that breaks our device emulation can reach.
pub mod jail;
pub mod preopened;
pub mod seccomp;
