//! KVM state: guest memory, the VM and its vCPUs.
pub mod clock;
pub mod dirty_log;
pub mod memory;
pub mod run_control;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vm_state;
