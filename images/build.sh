#!/usr/bin/env bash
# Builds the Laundromat guest images into target/images/ (under the workspace root):
#   target/images/bench.elf          the ring-3 bench unikernel   (images/bench)
#   target/images/pvh-dirty.elf      the tiny PVH dirtying guest  (images/pvh-dirty)
#   target/images/linux/vmlinuz      Debian's cloud kernel         (images/linux, on request)
#   target/images/linux/initramfs.cpio.gz
#   target/images/linux/rootfs.ext4  an ext4 root disk with guest-agentd (see linux/build.sh)
#
# Usage: images/build.sh [bench] [pvh] [linux] [all]
#   no argument builds bench and pvh; `linux` fetches a kernel with apt, so it is opt-in.
# Idempotent, and callable from any directory.
set -euo pipefail

images_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$images_dir")"
out="$root/target/images"

# Fails with a hint when a tool is missing; .ci/install-packages lists the Debian packages.
need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || {
            echo "images/build.sh: \`$tool\` is missing; install it (see .ci/install-packages)" >&2
            exit 1
        }
    done
}

build_bench() {
    need cargo
    echo "==> bench: $out/bench.elf"
    # The static relocation model gives absolute addressing (the image is loaded at its link
    # address and never relocated). It is set here only, with an explicit --target, so it applies
    # to the guest and not to build scripts. A target dir of its own keeps these flags from
    # invalidating the cache of plain `cargo` runs (tests, clippy) in images/bench.
    RUSTFLAGS="-C relocation-model=static" cargo build --release --locked \
        --manifest-path "$images_dir/bench/Cargo.toml" \
        --target x86_64-unknown-linux-gnu \
        --target-dir "$out/bench-target"
    install -m 0644 "$out/bench-target/x86_64-unknown-linux-gnu/release/bench" "$out/bench.elf"
}

build_pvh() {
    echo "==> pvh-dirty: $out/pvh-dirty.elf"
    need as ld
    local src="$images_dir/pvh-dirty" obj="$out/pvh-dirty.o"
    as --64 -o "$obj" "$src/pvh-dirty.S"
    ld -m elf_x86_64 -static -nostdlib --build-id=none -z max-page-size=0x200000 \
        -T "$src/link.ld" -o "$out/pvh-dirty.elf" "$obj"
    rm -f "$obj"
}

build_linux() {
    echo "==> linux: $out/linux/"
    need apt-get apt-cache dpkg-deb cpio gzip mkfs.ext4
    "$images_dir/linux/build.sh" "$out/linux"
}

targets=("$@")
((${#targets[@]})) || targets=(bench pvh)
mkdir -p "$out"
for t in "${targets[@]}"; do
    case "$t" in
    bench) build_bench ;;
    pvh) build_pvh ;;
    linux) build_linux ;;
    all) build_bench; build_pvh; build_linux ;;
    *)
        echo "images/build.sh: unknown image \"$t\" (expected bench, pvh, linux or all)" >&2
        exit 2
        ;;
    esac
done
echo "==> done"
