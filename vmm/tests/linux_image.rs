//! The Linux guest image that `images/build.sh linux` builds for bare-metal hosts: what is on
//! its ext4 root disk (read with e2fsprogs' debugfs, no mounts) and in its initramfs. These
//! machines cannot boot it to user space (see DESIGN.md), so its contents are what is checked.
mod common;

use std::path::Path;
use std::process::Command;

use common::image;

fn debugfs(fs: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(fs)
        .output()
        .expect("debugfs (e2fsprogs, see .ci/install-packages) runs");
    assert!(out.status.success(), "debugfs -R {request:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn the_root_disk_is_ext4_with_our_init_busybox_and_the_agent() {
    let fs = image("linux/rootfs.ext4");
    // The superblock, read directly: magic 0xef53, the extents feature that makes it ext4,
    // and the label the builder gives it.
    let bytes = std::fs::read(&fs).unwrap();
    let sb = &bytes[1024..2048];
    assert_eq!(le16(sb, 0x38), 0xef53, "ext2/3/4 magic");
    assert_ne!(le32(sb, 0x60) & 0x40, 0, "INCOMPAT_EXTENTS (ext4)");
    assert_eq!(&sb[0x78..0x78 + 15], b"laundromat-root");

    let init = debugfs(&fs, "cat /sbin/init");
    let ours =
        std::fs::read_to_string(common::workspace_root().join("images/linux/rootfs-init")).unwrap();
    assert_eq!(init, ours, "/sbin/init is images/linux/rootfs-init");
    let stat = debugfs(&fs, "stat /sbin/init");
    assert!(stat.contains("Mode:  0755"), "{stat}");
    assert!(stat.contains("User:     0"), "owned by root: {stat}");

    let sh = debugfs(&fs, "stat /bin/sh");
    assert!(sh.contains("Type: symlink"), "{sh}");
    assert!(sh.contains("\"/bin/busybox\""), "{sh}");
    let ls = debugfs(&fs, "ls -l /bin");
    assert!(ls.contains("busybox"), "{ls}");
    for dir in [
        "/proc",
        "/sys",
        "/dev",
        "/etc/guest-agent",
        "/var/lib/guest-agent",
    ] {
        assert!(debugfs(&fs, &format!("stat {dir}")).contains("Type: directory"));
    }

    // The agent: a static executable (no interpreter), and it runs here as it would there.
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("guest-agentd");
    debugfs(
        &fs,
        &format!("dump -p /usr/bin/guest-agentd {}", agent.display()),
    );
    let elf = std::fs::read(&agent).expect("/usr/bin/guest-agentd is in the image");
    assert_eq!(&elf[..4], b"\x7fELF");
    assert!(
        !elf.windows(16).any(|w| w.starts_with(b"/lib64/ld-linux")),
        "guest-agentd must be static: the image has no C library"
    );
    let help = Command::new(&agent).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("guest agent"));
}

#[test]
fn the_initramfs_carries_the_virtio_modules_and_the_switch_to_the_disk() {
    let initramfs = image("linux/initramfs.cpio.gz");
    let out = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$0\" | cpio -t --quiet")
        .arg(&initramfs)
        .output()
        .unwrap();
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&out.stdout);
    for m in [
        "virtio",
        "virtio_ring",
        "virtio_mmio",
        "virtio_blk",
        "virtio_net",
    ] {
        let path = format!("lib/modules/{m}.ko");
        assert!(
            list.lines().any(|l| l.ends_with(&path)),
            "{path} in:\n{list}"
        );
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$0\" | cpio -i --quiet --to-stdout init")
        .arg(&initramfs)
        .output()
        .unwrap();
    let ours = std::fs::read(common::workspace_root().join("images/linux/init")).unwrap();
    assert_eq!(out.stdout, ours, "/init is images/linux/init");
}
