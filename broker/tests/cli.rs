//! The README's walk-through with the real binaries: start a broker, make keys, register
//! and top up a tenant, buy a token with `laundromat` (one for an image with a disk too), read
//! it back, check the ledger.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, CLUSTER};
use sha2::Digest;

const BROKER: &str = env!("CARGO_BIN_EXE_broker");
const LAUNDROMAT: &str = env!("CARGO_BIN_EXE_laundromat");

fn run(program: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(program);
    command.args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run");
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn buy_a_token_with_the_command_line() {
    let dir = TempDir::new("broker-cli");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let operator_key = dir.0.join("operator.key");
    let op = stdout(&run(
        BROKER,
        &["keygen", "--out", operator_key.to_str().unwrap()],
        &[],
    ));
    let data = dir.0.join("data");
    let mut server = Command::new(BROKER)
        .args([
            "serve",
            "--operator-key",
            &op,
            "--cluster",
            &CLUSTER.to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--data-dir")
        .arg(&data)
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let config = dir.0.join("tenant");
    let env = [("LAUNDROMAT_CONFIG_DIR", config.as_path())];
    let broker_flag = ["--broker", url.as_str()];
    let tenant = stdout(&run(LAUNDROMAT, &["keygen"], &env));
    let operator = ["--operator-secret", operator_key.to_str().unwrap()];
    run(
        BROKER,
        &[&["tenant", "add"][..], &broker_flag, &operator, &[&tenant]].concat(),
        &[],
    );
    run(
        BROKER,
        &[&["topup"][..], &broker_flag, &operator, &[&tenant, "10000"]].concat(),
        &[],
    );
    let digest = "ab".repeat(32);
    let bought = run(
        LAUNDROMAT,
        &[
            &[
                "--json", "token", "buy", "--image", &digest, "--vcpus", "1", "--mem", "64",
                "--price", "5", "--period", "10s", "--links", "100",
            ][..],
            &broker_flag,
        ]
        .concat(),
        &env,
    );
    let bought: serde_json::Value = serde_json::from_slice(&bought.stdout).unwrap();
    assert_eq!(bought["escrow"], 500);
    let token_id = bought["token_id"].as_str().unwrap().to_owned();
    assert!(config
        .join("tokens")
        .join(format!("{token_id}.json"))
        .exists());
    let account: serde_json::Value = serde_json::from_slice(
        &run(
            LAUNDROMAT,
            &[&["--json", "account", "show"][..], &broker_flag].concat(),
            &env,
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(account["balance"], 9_500);
    let shown: serde_json::Value = serde_json::from_slice(
        &run(
            LAUNDROMAT,
            &[&["--json", "token", "show", &token_id][..], &broker_flag].concat(),
            &env,
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(
        (shown["escrow"].as_u64(), shown["next_link"].as_u64()),
        (Some(500), Some(1))
    );
    // An image with a disk: the token's digest binds the disk's SHA-256 and read-only flag.
    let (kernel, disk) = (dir.0.join("kernel"), dir.0.join("disk.img"));
    std::fs::write(&kernel, b"a kernel").unwrap();
    std::fs::write(&disk, vec![7u8; 3 << 20]).unwrap();
    let buy_disk = |image: &str| {
        let args = [
            "--json",
            "token",
            "buy",
            "--image",
            image,
            "--cmdline",
            "root=/dev/vda",
            "--disk",
            disk.to_str().unwrap(),
            "--disk-readonly",
            "--vcpus",
            "1",
            "--mem",
            "64",
            "--price",
            "5",
            "--period",
            "10s",
            "--links",
            "2",
        ];
        Command::new(LAUNDROMAT)
            .args(args)
            .args(broker_flag)
            .env("LAUNDROMAT_CONFIG_DIR", &config)
            .output()
            .unwrap()
    };
    let bought = buy_disk(kernel.to_str().unwrap());
    assert!(
        bought.status.success(),
        "{}",
        String::from_utf8_lossy(&bought.stderr)
    );
    let bought: serde_json::Value = serde_json::from_slice(&bought.stdout).unwrap();
    let file = config
        .join("tokens")
        .join(format!("{}.json", bought["token_id"].as_str().unwrap()));
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let signed: token::SignedToken = serde_json::from_value(file["token"].clone()).unwrap();
    let part = token::DiskPart {
        sha256: sha2::Sha256::digest(vec![7u8; 3 << 20]).into(),
        readonly: true,
    };
    assert_eq!(
        signed.token().image_digest,
        token::image_digest_with_disk(b"a kernel", None, "root=/dev/vda", Some(part))
    );
    // A digest already binds any disk: a disk beside one is refused.
    let refused = buy_disk(&digest);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--disk goes with a kernel file"),
        "{stderr}"
    );
    // A second tenant key cannot be made over the first.
    assert!(!Command::new(LAUNDROMAT)
        .arg("keygen")
        .env("LAUNDROMAT_CONFIG_DIR", &config)
        .output()
        .unwrap()
        .status
        .success());
    let db = format!("sqlite://{}", data.join("broker.db").display());
    let check = stdout(&run(BROKER, &["check", "--db", &db], &[]));
    assert!(check.contains("all invariants hold"), "{check}");
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());
}
