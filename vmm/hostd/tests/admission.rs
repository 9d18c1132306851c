//! Admission: every refusal has its own code, and none leaves anything behind.

mod common;

use common::*;
use token::{ClusterId, SigningKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_is_distinct_and_leaves_nothing() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let good = TokenSpec::new(&kernel, IDLE);
    let admitted = good.buy();
    let forged = TokenSpec {
        signer: SigningKey::from_bytes(&[9; 32]),
        ..good.clone()
    }
    .buy();
    let expired = TokenSpec {
        not_before: now_s() - 100,
        expiry: now_s() - 50,
        ..good.clone()
    }
    .buy();
    let early = TokenSpec {
        not_before: now_s() + 600,
        ..good.clone()
    }
    .buy();
    let other_cluster = TokenSpec {
        cluster: ClusterId([7; 16]),
        ..good.clone()
    }
    .buy();
    let other_image = TokenSpec {
        cmdline: "workload=idle report-ms=50".into(),
        ..good.clone()
    }
    .buy();
    let too_big = TokenSpec {
        memory_mib: 1024,
        ..good.clone()
    }
    .buy();
    let leased = good.buy();
    let other_host = hostd::identity::HostIdentity::from_key(
        SigningKey::from_bytes(&[0x77; 32]),
        std::path::PathBuf::new(),
    );
    let hostd = Hostd::start(
        &[],
        &[&admitted, &leased],
        &[(leased.token().token_id, other_host.host_id)],
    );
    let digest = hostd.client.put_image(kernel.clone()).await.unwrap();

    // A good one first, so that "already running" can be tried.
    let vm = hostd
        .client
        .admit(&request(&admitted, &digest, IDLE))
        .await
        .unwrap();
    assert_eq!(vm.state, "running");
    assert_eq!(vm.memory_mib, 32);

    let mut more_memory = request(&good.buy(), &digest, IDLE);
    more_memory.memory_mib = Some(64);
    let missing = "ab".repeat(32);
    let mut not_hex = request(&admitted, &digest, IDLE);
    not_hex.token = "zz".into();
    let cases = [
        (not_hex, "malformed_token", 400),
        (request(&forged, &digest, IDLE), "bad_token_signature", 401),
        (request(&expired, &digest, IDLE), "token_expired", 403),
        (request(&early, &digest, IDLE), "token_not_yet_valid", 403),
        (request(&other_cluster, &digest, IDLE), "wrong_cluster", 403),
        (request(&other_image, &digest, IDLE), "wrong_image", 403),
        (
            request(&good.buy(), &digest, "workload=idle report-ms=50"),
            "wrong_image",
            403,
        ),
        (request(&good.buy(), &missing, IDLE), "image_not_found", 404),
        (more_memory, "exceeds_token", 403),
        (
            request(&too_big, &digest, IDLE),
            "insufficient_capacity",
            503,
        ),
        (request(&admitted, &digest, IDLE), "token_running", 409),
        (request(&leased, &digest, IDLE), "lease_held", 409),
    ];
    for (request, code, status) in cases {
        let refused = hostd.client.admit(&request).await.unwrap_err();
        assert_eq!(
            (refused.code(), refused.status()),
            (Some(code), Some(status)),
            "{refused}"
        );
    }

    // Nothing started or leaked: one VM, one directory, one vmm child, one lease.
    assert_eq!(hostd.client.list().await.unwrap().len(), 1);
    assert_eq!(hostd.vm_dirs(), 1);
    let broker = hostd.broker();
    assert_eq!(
        broker.leases.get(&admitted.token().token_id),
        Some(&hostd.identity.host_id)
    );
    assert_eq!(
        broker.leases.get(&leased.token().token_id),
        Some(&other_host.host_id)
    );
    assert_eq!(broker.leases.len(), 2);
    let vmms = processes_under(&hostd.data_dir().join("vms"));
    assert_eq!(vmms, vec![vm.pid.unwrap()]);
    let metrics = hostd.client.metrics().await.unwrap();
    assert!(
        metrics.contains("hostd_admissions_total{outcome=\"admitted\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hostd_admissions_total{outcome=\"wrong_image\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hostd_vms{state=\"running\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn image_uploads_are_checked() {
    let hostd = Hostd::start(&["--max-image-mib", "1"], &[], &[]);
    let http = reqwest::Client::new();
    let put = |digest: String, body: Vec<u8>| {
        let http = http.clone();
        let url = format!("{}/v1/images/{digest}", hostd.url);
        async move { http.put(url).body(body).send().await.unwrap() }
    };
    let wrong = put("00".repeat(32), b"kernel".to_vec()).await;
    assert_eq!(wrong.status(), 400);
    assert!(wrong.text().await.unwrap().contains("digest_mismatch"));
    let big = vec![0u8; (1 << 20) + 1];
    let digest = token::hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(&big));
    let too_big = put(digest, big).await;
    assert_eq!(too_big.status(), 413);
    let bad = put("../x".into(), Vec::new()).await;
    assert!(bad.status().is_client_error());
    // Nothing half-written is left.
    assert_eq!(
        std::fs::read_dir(hostd.data_dir().join("images"))
            .unwrap()
            .count(),
        0
    );
    assert!(hostd.client.put_image(b"kernel".to_vec()).await.is_ok());
}
