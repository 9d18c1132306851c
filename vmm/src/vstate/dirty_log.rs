//! KVM's dirty log in manual-protect mode (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`).
//!
//! In the classic mode, `KVM_GET_DIRTY_LOG` clears the log and write-protects every dirty page
//! at once, and turning logging on write-protects all guest RAM (splitting huge pages): the
//! guest then takes a fault on its first write to each page, all over its memory, at the same
//! moment. In manual mode the log is read without clearing it, and the VMM clears (and so
//! re-protects) pages with `KVM_CLEAR_DIRTY_LOG` in chunks, right before sending each chunk.
//! With `KVM_DIRTY_LOG_INITIALLY_SET`, turning logging on protects nothing: every bit starts
//! set, and a page is only protected when its chunk is first sent. Pages not sent yet keep
//! their huge-page mappings and fault-free writes.
use kvm_bindings::{
    kvm_clear_dirty_log, kvm_enable_cap, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_DIRTY_LOG_INITIALLY_SET, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iowr_nr;

const KVMIO: u32 = 0xAE;
ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

/// How this VM's dirty log behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirtyLogMode {
    /// Reading the log does not clear it; [`clear`] does.
    pub manual: bool,
    /// Turning logging on sets every bit instead of write-protecting all memory.
    pub initially_set: bool,
}

/// Turns manual protection on for `fd` if the host supports it, with initially-set bits when
/// it can. Hosts without the capability keep the classic mode: nothing fails.
/// `VMM_DIRTY_LOG=classic` keeps the classic mode, to measure what manual mode saves.
pub fn enable_manual(fd: &VmFd) -> DirtyLogMode {
    if std::env::var("VMM_DIRTY_LOG").as_deref() == Ok("classic") {
        return DirtyLogMode::default();
    }
    let supported = fd.check_extension_raw(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.into());
    if supported <= 0 {
        return DirtyLogMode::default();
    }
    let supported = supported as u32;
    if supported & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE == 0 {
        return DirtyLogMode::default();
    }
    let flags = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | (supported & KVM_DIRTY_LOG_INITIALLY_SET);
    let cap = kvm_enable_cap {
        cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        args: [flags.into(), 0, 0, 0],
        ..Default::default()
    };
    match fd.enable_cap(&cap) {
        Ok(()) => DirtyLogMode {
            manual: true,
            initially_set: flags & KVM_DIRTY_LOG_INITIALLY_SET != 0,
        },
        Err(e) => {
            tracing::debug!("manual dirty-log protection unavailable: {e}");
            DirtyLogMode::default()
        }
    }
}

/// Clears the bits of `bitmap` (one per page, from `first_page`, which must be a multiple of
/// 64) in slot `slot`'s dirty log, write-protecting those pages again so later writes are
/// logged. `bitmap` covers `pages` pages: a multiple of 64, or up to the end of the slot.
pub fn clear(
    fd: &VmFd,
    slot: u32,
    first_page: u64,
    pages: u32,
    bitmap: &[u64],
) -> Result<(), kvm_ioctls::Error> {
    if bitmap.len() < (pages as usize).div_ceil(64) || !first_page.is_multiple_of(64) {
        return Err(kvm_ioctls::Error::new(libc::EINVAL));
    }
    let mut arg = kvm_clear_dirty_log {
        slot,
        num_pages: pages,
        first_page,
        ..Default::default()
    };
    arg.__bindgen_anon_1.dirty_bitmap = bitmap.as_ptr() as *mut libc::c_void;
    // SAFETY: `arg` points at `bitmap`, which holds at least `pages` bits (checked above) and
    // outlives the call; KVM only reads it. The ioctl number matches the argument's type.
    let rc = unsafe { ioctl_with_ref(fd, KVM_CLEAR_DIRTY_LOG(), &arg) };
    if rc < 0 {
        return Err(kvm_ioctls::Error::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::vstate::memory::{self, Backing};
    use crate::vstate::vm::Vm;

    #[test]
    fn manual_mode_keeps_bits_until_cleared() {
        let Ok(vm) = Vm::new() else {
            assert!(
                std::env::var("LAUNDROMAT_REQUIRE_KVM").as_deref() != Ok("1"),
                "/dev/kvm is not usable"
            );
            return;
        };
        let mode = vm.dirty_log_mode();
        eprintln!("dirty-log mode on this host: {mode:?}");
        let mem = memory::create(4 << 20, &Backing::Anonymous).unwrap();
        vm.register_memory(&mem, true).unwrap();
        let pages = 1024;
        let log = vm.dirty_log(0, 4 << 20).unwrap();
        let set: u32 = log.iter().map(|w| w.count_ones()).sum();
        if !mode.manual {
            return;
        }
        // Nothing ran: only initially-set bits can be there, and reading cleared none.
        let expected = if mode.initially_set { pages } else { 0 };
        assert_eq!(set, expected);
        assert_eq!(vm.dirty_log(0, 4 << 20).unwrap(), log);
        vm.clear_dirty_log(0, 0, 128, &[u64::MAX, u64::MAX])
            .unwrap();
        let after: u32 = vm
            .dirty_log(0, 4 << 20)
            .unwrap()
            .iter()
            .map(|w| w.count_ones())
            .sum();
        assert_eq!(after, expected.saturating_sub(128));
        // A chunk that does not start on a 64-page boundary is refused before KVM sees it.
        assert!(vm.clear_dirty_log(0, 3, 64, &[u64::MAX]).is_err());
    }
}
