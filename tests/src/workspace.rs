//! Where the workspace, its binaries and the guest images are.

use std::{
    env,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum WorkspaceError {
    #[error("{} is not the Laundromat workspace root (it has no Cargo.toml); set LAUNDROMAT_ROOT", .0.display())]
    NotARoot(PathBuf),
    #[error("missing {}; build {} with `{build}`", .missing.display(), .what)]
    Missing {
        what: &'static str,
        missing: PathBuf,
        build: &'static str,
    },
}

/// The commands that build what the harnesses run, from the workspace root.
pub const BUILD_IMAGES: &str = "bash images/build.sh";
pub const BUILD_VMM: &str = "cargo build --release -p vmm";
pub const BUILD_AGENTD: &str = "cargo build --release -p guest-agentd";

/// The guest images `images/build.sh` makes by default.
#[derive(Clone, Copy, Debug)]
pub enum Image {
    Bench,
    PvhDirty,
}

impl Image {
    fn file_name(self) -> &'static str {
        match self {
            Image::Bench => "bench.elf",
            Image::PvhDirty => "pvh-dirty.elf",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
    target: PathBuf,
}

impl Workspace {
    /// The workspace root is `LAUNDROMAT_ROOT` if set, else the parent of this crate's source
    /// directory (recorded at build time, which is right for `cargo run` and `cargo test`). The
    /// target directory honours `CARGO_TARGET_DIR` as Cargo does.
    pub fn locate() -> Result<Self, WorkspaceError> {
        let root = match env::var_os("LAUNDROMAT_ROOT") {
            Some(root) => PathBuf::from(root),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        };
        let root = root.canonicalize().unwrap_or(root);
        if !root.join("Cargo.toml").is_file() {
            return Err(WorkspaceError::NotARoot(root));
        }
        // A relative CARGO_TARGET_DIR is relative to the current directory, for Cargo and here.
        let target =
            env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        Ok(Workspace { root, target })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `target/release/vmm`, or an error naming the command that builds it.
    pub fn vmm(&self) -> Result<PathBuf, WorkspaceError> {
        existing(self.target.join("release/vmm"), "the VMM", BUILD_VMM)
    }

    /// `target/release/guest-agentd`, or an error naming the command that builds it.
    pub fn guest_agentd(&self) -> Result<PathBuf, WorkspaceError> {
        existing(
            self.target.join("release/guest-agentd"),
            "the guest agent daemon",
            BUILD_AGENTD,
        )
    }

    /// A guest image under `target/images/` (where `images/build.sh` always puts them), or an
    /// error naming the command that builds it.
    pub fn image(&self, image: Image) -> Result<PathBuf, WorkspaceError> {
        let path = self.root.join("target/images").join(image.file_name());
        existing(path, "the guest images", BUILD_IMAGES)
    }
}

fn existing(
    path: PathBuf,
    what: &'static str,
    build: &'static str,
) -> Result<PathBuf, WorkspaceError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(WorkspaceError::Missing {
            what,
            missing: path,
            build,
        })
    }
}
