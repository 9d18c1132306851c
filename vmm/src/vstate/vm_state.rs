//! Saving and restoring VM-wide KVM state: the in-kernel PICs, IOAPIC, PIT and kvmclock.
//! Only VMs with an in-kernel irqchip (Linux guests) have any.
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("cannot {op} the VM's interrupt controller state")]
pub struct VmStateError {
    op: &'static str,
    source: kvm_ioctls::Error,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct IrqchipState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

fn err(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { op, source }
}

fn chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, VmStateError> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut c).map_err(err("read"))?;
    Ok(c)
}

pub fn save(vm: &VmFd) -> Result<IrqchipState, VmStateError> {
    let mut clock = vm.get_clock().map_err(err("read the clock of"))?;
    // Only the time is meaningful on another host; the flags describe this one.
    clock.flags = 0;
    Ok(IrqchipState {
        pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(err("read the PIT of"))?,
        clock,
    })
}

pub fn restore(vm: &VmFd, state: &IrqchipState) -> Result<(), VmStateError> {
    vm.set_irqchip(&state.pic_master).map_err(err("write"))?;
    vm.set_irqchip(&state.pic_slave).map_err(err("write"))?;
    vm.set_irqchip(&state.ioapic).map_err(err("write"))?;
    vm.set_pit2(&state.pit).map_err(err("write the PIT of"))?;
    vm.set_clock(&state.clock)
        .map_err(err("write the clock of"))?;
    Ok(())
}
