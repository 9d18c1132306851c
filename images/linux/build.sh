#!/usr/bin/env bash
# Builds the Linux guest image for `vmm run --boot linux`:
#   <out>/vmlinuz               Debian's linux-image-cloud-amd64 kernel (bzImage)
#   <out>/kernel-version        its version, e.g. 6.1.0-56-cloud-amd64
#   <out>/modules/              the kernel's virtio modules (virtio-mmio, -blk, -net)
#   <out>/initramfs.cpio.gz     busybox-static, the modules and the /init next to this script
#   <out>/guest-agentd          the guest agent daemon, built static (skipped if
#                               LAUNDROMAT_AGENT=0 or cargo is missing)
#   <out>/rootfs.ext4           an ext4 root file system (mkfs.ext4 -d, no mounts): busybox,
#                               rootfs-init as /sbin/init, guest-agentd; ROOTFS_MIB sets its
#                               size (default 64)
#
# Usage: images/linux/build.sh [<out>]   (default: target/images/linux under the workspace root;
# images/build.sh linux calls it). Network: Debian apt only, through `apt-get download`, with one
# `apt-get update` if the package lists are missing or stale. Idempotent: a kernel or busybox that
# is already there is not downloaded again; the initramfs is rebuilt (it takes a moment).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(dirname "$(dirname "$here")")"
out="${1:-$workspace/target/images/linux}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

updated=false
apt_update() {
    if ! $updated; then
        echo "    apt-get update"
        apt-get update -qq
        updated=true
    fi
}

# The versioned package behind a metapackage such as linux-image-cloud-amd64.
kernel_package() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64(-unsigned)?$/ { print $2; exit }'
}

# Downloads package $1 into $work and prints the .deb's path.
download() {
    (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$1" >&2) ||
        { apt_update && (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$1" >&2); }
    ls "$work/$1"_*.deb
}

# Debian builds these as modules: the initramfs loads them before it can see /dev/vda or eth0.
modules=(virtio virtio_ring virtio_mmio virtio_blk failover net_failover virtio_net)

if [[ -s "$out/vmlinuz" && -s "$out/kernel-version" && -s "$out/modules/virtio_blk.ko" ]]; then
    echo "    kernel present, not downloading"
else
    pkg="$(kernel_package)"
    if [[ -z "$pkg" ]]; then
        apt_update
        pkg="$(kernel_package)"
    fi
    if [[ -z "$pkg" ]]; then
        echo "images/linux/build.sh: apt knows no linux-image-*-cloud-amd64 behind linux-image-cloud-amd64" >&2
        exit 1
    fi
    echo "    downloading $pkg"
    deb="$(download "$pkg")"
    dpkg-deb -x "$deb" "$work/kernel"
    vmlinuz="$(ls "$work"/kernel/boot/vmlinuz-*)"
    install -m 0644 "$vmlinuz" "$out/vmlinuz.tmp"
    mv "$out/vmlinuz.tmp" "$out/vmlinuz"
    basename "$vmlinuz" | sed 's/^vmlinuz-//' >"$out/kernel-version"
    mkdir -p "$out/modules"
    for m in "${modules[@]}"; do
        ko="$(find "$work/kernel/lib/modules" -name "$m.ko" | head -n 1)"
        [[ -z "$ko" ]] || install -m 0644 "$ko" "$out/modules/$m.ko"
    done
fi
echo "    kernel version: $(cat "$out/kernel-version")"

if [[ -x "$out/busybox" ]]; then
    echo "    busybox present, not downloading"
else
    echo "    downloading busybox-static"
    deb="$(download busybox-static)"
    dpkg-deb -x "$deb" "$work/busybox"
    install -m 0755 "$work/busybox/bin/busybox" "$out/busybox"
fi

echo "    building initramfs.cpio.gz"
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc}
install -m 0755 "$out/busybox" "$root/bin/busybox"
install -m 0755 "$here/init" "$root/init"
mkdir -p "$root/lib/modules"
cp "$out"/modules/*.ko "$root/lib/modules/"
# The kernel opens /dev/console for init before /init can mount devtmpfs. Debian kernels build
# one into their own initramfs too, so this is belt and braces (and needs root).
mknod -m 0600 "$root/dev/console" c 5 1 2>/dev/null || true
# Fixed timestamps and owners, sorted names: the same inputs give a byte-identical archive.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --owner=0:0 --reproducible --quiet) |
    gzip -9n >"$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "    $out/vmlinuz ($(stat -c %s "$out/vmlinuz") bytes)"
echo "    $out/initramfs.cpio.gz ($(stat -c %s "$out/initramfs.cpio.gz") bytes)"

if [[ "${LAUNDROMAT_AGENT:-1}" != 0 ]] && command -v cargo >/dev/null; then
    echo "    building guest-agentd (static)"
    # Static, so the root file system needs no C library; its own target dir keeps these
    # flags away from the workspace's build cache.
    RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --locked \
        --manifest-path "$workspace/Cargo.toml" -p guest-agentd --bin guest-agentd \
        --target x86_64-unknown-linux-gnu --target-dir "$workspace/target/images/agentd-target"
    install -m 0755 "$workspace/target/images/agentd-target/x86_64-unknown-linux-gnu/release/guest-agentd" \
        "$out/guest-agentd"
fi

echo "    building rootfs.ext4"
rfs="$work/rootfs"
mkdir -p "$rfs"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc/guest-agent,var/lib/guest-agent,var/log}
install -m 0755 "$out/busybox" "$rfs/bin/busybox"
install -m 0755 "$here/rootfs-init" "$rfs/sbin/init"
for applet in $("$out/busybox" --list-full); do
    [[ -e "$rfs/$applet" || -L "$rfs/$applet" ]] || ln -s /bin/busybox "$rfs/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$rfs/etc/passwd"
echo "root:x:0:" >"$rfs/etc/group"
echo "laundromat" >"$rfs/etc/hostname"
if [[ -x "$out/guest-agentd" ]]; then
    install -m 0755 "$out/guest-agentd" "$rfs/usr/bin/guest-agentd"
fi
rm -f "$out/rootfs.ext4.tmp"
mkfs.ext4 -q -F -L laundromat-root -E root_owner=0:0 -d "$rfs" "$out/rootfs.ext4.tmp" "${ROOTFS_MIB:-64}M"
mv "$out/rootfs.ext4.tmp" "$out/rootfs.ext4"
echo "    $out/rootfs.ext4 ($(stat -c %s "$out/rootfs.ext4") bytes)"
