//! A source and a destination `vmm` on loopback for migration tests, and what the tests ask
//! of them.
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::hosts::Hosts;
use super::*;
use vmm::api::{client, protocol::Request};

pub const LIMIT: Duration = Duration::from_secs(60);

pub struct Pair {
    _dir: tempfile::TempDir,
    pub hosts: Hosts,
    pub src_sock: PathBuf,
    pub dst_sock: PathBuf,
    pub src: Vmm,
    pub dst: Vmm,
    pub port: u16,
}

/// A dirtying bench guest on the source and an `--incoming` destination, both on loopback.
pub fn pair(wss: u32, vcpus: u8, extra_cmdline: &str) -> Pair {
    pair_with(wss, vcpus, extra_cmdline, false)
}

/// As [`pair`]; with `on_files`, each side's RAM is a file of its own mapped shared
/// (`--mem-file`), as a host that keeps guest RAM in tmpfs has it.
pub fn pair_with(wss: u32, vcpus: u8, extra_cmdline: &str, on_files: bool) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let mem_file = |name: &str| match on_files {
        true => vec![
            "--mem-file".into(),
            dir.path().join(name).display().to_string(),
        ],
        false => Vec::new(),
    };
    let src_sock = dir.path().join("src.sock");
    let dst_sock = dir.path().join("dst.sock");
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let hosts = Hosts::new();
    let mut args = hosts.incoming_args(&url);
    args.extend(["--api-sock".into(), dst_sock.display().to_string()]);
    args.extend(mem_file("dst.mem"));
    let dst = Vmm::spawn(&args);
    dst.wait_stderr("waiting for an incoming migration", LIMIT);
    let cmdline = format!("workload=dirty wss={wss} report-ms=100 {extra_cmdline}");
    let mut src_args = bench_args(u64::from(wss) + 64, vcpus, &cmdline, Some(&src_sock));
    src_args.extend(mem_file("src.mem"));
    let src = Vmm::spawn(&src_args);
    // Let the guest touch its whole working set at least once.
    src.wait_line(LIMIT, |l| field(l, "gen").is_some_and(|g| g >= 2));
    Pair {
        _dir: dir,
        hosts,
        src_sock,
        dst_sock,
        src,
        dst,
        port,
    }
}

pub fn migrate(p: &Pair, port: u16, lanes: u32) -> serde_json::Value {
    let mut params = p.hosts.params(format!("tcp://127.0.0.1:{port}"));
    params.connections = lanes;
    client::call_streaming(&p.src_sock, &Request::Migrate(params), LIMIT, &mut |_| {})
        .expect("migrate call")
}

pub fn status(sock: &Path) -> serde_json::Value {
    client::call(sock, &Request::Status {}, Duration::from_secs(10)).expect("status")
}

/// Highest `gen=` and every `errors=` among `lines`.
pub fn gens(lines: &[String]) -> (Option<u64>, Vec<u64>) {
    let g = lines.iter().filter_map(|l| field(l, "gen")).max();
    let e = lines.iter().filter_map(|l| field(l, "errors")).collect();
    (g, e)
}

pub fn url(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

/// Migrates the VM behind `src_sock` with `params` and checks that it completed, showing both
/// sides' logs if not. Returns the statistics.
pub fn migrate_completed(
    src_sock: &Path,
    params: migrator::MigrateParams,
    src: &Vmm,
    dst: &Vmm,
    limit: Duration,
) -> serde_json::Value {
    let stats = client::call_streaming(src_sock, &Request::Migrate(params), limit, &mut |_| {})
        .expect("migrate call");
    assert_eq!(
        stats["status"],
        "completed",
        "{stats}\nsrc:\n{}\ndst:\n{}",
        src.stderr(),
        dst.stderr()
    );
    stats
}
