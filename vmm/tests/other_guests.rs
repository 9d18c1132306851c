//! PVH and Linux guests. On PVM hosts their CPL0 code is emulated, so Linux gets only as far
//! as its early boot log before an emulation failure, which the VMM must report cleanly.
mod common;

use std::time::Duration;

use common::*;

#[test]
fn pvh_dirty_guest_boots_and_prints() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let kernel = image("pvh-dirty.elf");
    let mut vm = Vmm::spawn(&[
        "run",
        "--boot",
        "pvh",
        "--kernel",
        kernel.to_str().unwrap(),
        "--mem",
        "64",
        "--cmdline",
        "wss=4",
        "--api-sock",
        sock.to_str().unwrap(),
    ]);
    let line = vm.wait_line(Duration::from_secs(60), |l| l.contains("pvh-dirty"));
    assert!(line.contains("up"), "{line}");
    let v = vmm::api::client::call(
        &sock,
        &vmm::api::protocol::Request::Shutdown {},
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(v["ok"], true);
    let status = wait_with_limit(&mut vm.child, Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

/// How long the emulated early boot may take before the VMM must have reported the failure.
const LINUX_LIMIT: Duration = Duration::from_secs(400);

#[test]
fn linux_prints_its_early_boot_log_then_stops_cleanly() {
    if !kvm_available() {
        return;
    }
    let kernel = image("linux/vmlinuz");
    let initrd = image("linux/initramfs.cpio.gz");
    let cmdline = "console=ttyS0 earlyprintk=ttyS0 panic=-1 laundromat.test=e820";
    // A disk, so the DSDT declares a virtio-mmio device and its irqfd is wired.
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(1 << 20).unwrap();
    let disk_arg = format!("path={},readonly=on", disk.path().display());
    let out = run_vmm(
        &[
            "run",
            "--boot",
            "linux",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            cmdline,
            "--mem",
            "128",
            "--vcpus",
            "2",
            "--disk",
            &disk_arg,
        ],
        LINUX_LIMIT,
    );
    let console = &out.stdout;
    assert!(console.contains("Linux version"), "no banner:\n{console}");
    assert!(
        console.contains(&format!("Command line: {cmdline}")),
        "cmdline:\n{console}"
    );
    // The e820 map we built: conventional memory below the EBDA, then RAM from 1 MiB.
    assert!(
        console.contains("BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable"),
        "e820 low:\n{console}"
    );
    assert!(
        console.contains("BIOS-e820: [mem 0x0000000000100000-0x0000000007ffffff] usable"),
        "e820 high:\n{console}"
    );
    // We place the initrd page-aligned at the top of RAM.
    let size = std::fs::metadata(&initrd).unwrap().len();
    let start = ((128u64 << 20) - size) & !0xfff;
    let expected = format!(
        "RAMDISK: [mem {start:#010x}-{:#010x}]",
        start + size.next_multiple_of(4096) - 1
    );
    assert!(
        console.contains(&expected),
        "expected {expected:?} in:\n{console}"
    );
    // Our ACPI tables, found through the zero page's RSDP pointer, and the two vCPUs the MADT
    // gives (the kernel reaches these lines before the emulation failure on PVM hosts).
    for line in [
        "ACPI: RSDP 0x00000000000E0000 000024 (v02 LNDRMT)",
        "ACPI: XSDT 0x00000000000E0030",
        "ACPI: FACP ",
        "ACPI: DSDT ",
        "ACPI: APIC ",
        "ACPI: INT_SRC_OVR (bus 0 bus_irq 4 global_irq 4 high edge)",
        "ACPI: Using ACPI (MADT) for SMP configuration information",
        "smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
    ] {
        assert!(console.contains(line), "expected {line:?} in:\n{console}");
    }
    match out.status.code() {
        // On PVM hosts the kernel ends in an emulation failure, reported with registers.
        Some(70) => {
            assert!(out.stderr.contains("guest crashed"), "{}", out.stderr);
            assert!(out.stderr.contains("rip="), "{}", out.stderr);
        }
        // On a bare-metal host the initramfs powers off (or panics and reboots with panic=-1).
        other => assert!(
            matches!(other, Some(0) | Some(70)),
            "exit {other:?}: {}",
            out.stderr
        ),
    }
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    eprintln!("linux stopped after {:?}", out.elapsed);
}
