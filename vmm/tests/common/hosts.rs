//! Host identities for migration tests: a source and a destination key pair in files, as
//! `vmm keygen` makes them, and a stranger's key.
use std::path::{Path, PathBuf};

use migrator::identity::Identity;

pub struct Hosts {
    _dir: tempfile::TempDir,
    pub src_id: PathBuf,
    pub src_pub: String,
    pub dst_id: PathBuf,
    pub dst_pub: String,
    /// A key pair neither side knows.
    pub stranger_id: PathBuf,
    pub stranger_pub: String,
}

fn make(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let id = Identity::generate();
    id.save(&path).expect("save identity");
    (path, id.public().to_string())
}

impl Hosts {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (src_id, src_pub) = make(dir.path(), "source.pem");
        let (dst_id, dst_pub) = make(dir.path(), "destination.pem");
        let (stranger_id, stranger_pub) = make(dir.path(), "stranger.pem");
        Self {
            _dir: dir,
            src_id,
            src_pub,
            dst_id,
            dst_pub,
            stranger_id,
            stranger_pub,
        }
    }

    pub fn src(&self) -> Identity {
        Identity::load(&self.src_id).unwrap()
    }

    pub fn stranger(&self) -> Identity {
        Identity::load(&self.stranger_id).unwrap()
    }

    /// `vmm run` arguments for a destination on `url` that accepts the source.
    pub fn incoming_args(&self, url: &str) -> Vec<String> {
        [
            "run",
            "--incoming",
            url,
            "--identity",
            self.dst_id.to_str().unwrap(),
            "--peer",
            &self.src_pub,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Migration parameters for the source, to `url`.
    pub fn params(&self, url: String) -> migrator::MigrateParams {
        migrator::MigrateParams::new(url, &self.src_id, self.dst_pub.clone())
    }
}
