//! Floods: a guest flooding its console, and clients flooding the API, leave hostd's memory
//! and disk bounded and paying VMs paid.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

/// A bench-mode ELF whose ring-3 code writes "A\n" to the MMIO console forever.
fn console_flooder() -> Vec<u8> {
    let paddr: u64 = 0x10_0000;
    let mut code = vec![0x48, 0xb8]; // movabs rax, CONSOLE_BASE
    code.extend_from_slice(&bench_abi::CONSOLE_BASE.to_le_bytes());
    code.extend_from_slice(&[0xc6, 0x00, b'A', 0xc6, 0x00, b'\n', 0xeb, 0xf8]); // loop
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(16, 0);
    elf.extend_from_slice(&2u16.to_le_bytes()); // executable
    elf.extend_from_slice(&62u16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    for word in [paddr, 64, 0] {
        elf.extend_from_slice(&word.to_le_bytes()); // entry, phoff, shoff
    }
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&7u32.to_le_bytes()); // RWX
    for word in [0x1000, paddr, paddr, code.len() as u64, 0x1000, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.resize(0x1000, 0);
    elf.extend_from_slice(&code);
    elf
}

/// The console ring the flood test configures, bytes.
const RING: u64 = 16 * 1024;

fn disk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                disk_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_flood_is_kept_in_a_bounded_ring() {
    if !kvm_available() {
        return;
    }
    let kernel = console_flooder();
    let bought = TokenSpec::new(&kernel, "").buy();
    // Under PVM every console byte is an emulated MMIO exit: a flood here is some 10 KiB/s,
    // so the ring is small enough for the test to overrun it several times within seconds.
    let hostd = Hostd::start(
        &["--console-kib", "16", "--grace-s", "600"],
        &[&bought],
        &[],
    );
    let vm = hostd.admit(&bought, &kernel, "").await.unwrap();
    let baseline_rss = rss_kib(hostd.pid());
    // The guest writes far more than the ring holds.
    let flooded = eventually(Duration::from_secs(60), || {
        let view = futures_block(hostd.client.vm(&vm.vm_id)).unwrap();
        view.console_bytes > 4 * RING
    })
    .await;
    assert!(
        flooded,
        "the guest did not flood: {:?}",
        hostd.client.vm(&vm.vm_id).await
    );
    let (held, next) = hostd
        .client
        .console(&vm.vm_id, 0, &bought.tenant)
        .await
        .unwrap();
    assert!(held.len() <= RING as usize, "{} bytes held", held.len());
    assert!(next > 4 * RING);
    assert!(held.iter().all(|&b| b == b'A' || b == b'\n'));
    // Memory: the ring and fixed buffers, not the flood. Disk: only records and the image.
    let rss = rss_kib(hostd.pid());
    assert!(
        rss < baseline_rss + 16 * 1024,
        "hostd grew from {baseline_rss} KiB to {rss} KiB"
    );
    let data = hostd.data_dir();
    assert!(disk_bytes(&data) - disk_bytes(&data.join("images")) < 64 * 1024);
    assert!(process_alive(vm.pid.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_is_shed_and_paying_vms_stay_paid() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let mut bought = TokenSpec::new(&kernel, IDLE).buy();
    let hostd = Hostd::start(&["--max-concurrent", "4"], &[&bought], &[]);
    let vm = hostd.admit(&bought, &kernel, IDLE).await.unwrap();
    hostd
        .client
        .pay(&vm.vm_id, &bought.payer.pay(1).unwrap())
        .await
        .unwrap();
    let baseline_rss = rss_kib(hostd.pid());

    // Four uploads that never finish hold every slot: everything else is shed at once.
    let address = hostd.url.trim_start_matches("http://").to_string();
    let holds: Vec<_> = (0..4)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            let head = format!(
                "PUT /v1/images/{} HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\nslow",
                "00".repeat(32)
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream
        })
        .collect();
    let http = reqwest::Client::new();
    let shed = eventually(Duration::from_secs(10), || {
        let answer = futures_block(http.get(format!("{}/v1/vms", hostd.url)).send()).unwrap();
        answer.status() == 503 && answer.headers().get("retry-after").is_some()
    })
    .await;
    assert!(shed, "a request beyond the limit was not shed");
    let second = bought.payer.pay(1).unwrap();
    let refused = hostd.client.pay(&vm.vm_id, &second).await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.status()),
        (Some("overloaded"), Some(503))
    );

    // A bounded flood, 64 requests in flight at a time.
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let batch: Vec<_> = (0..64)
            .map(|_| tokio::spawn(http.get(format!("{}/v1/vms", hostd.url)).send()))
            .collect();
        for request in batch {
            let status = request.await.unwrap().unwrap().status().as_u16();
            *statuses.entry(status).or_insert(0) += 1;
        }
    }
    assert_eq!(statuses.get(&503), Some(&(30 * 64)), "{statuses:?}");
    drop(holds);

    // The slots free up; the tenant's retry of the link that was shed is accepted.
    let receipt = eventually(Duration::from_secs(10), || {
        futures_block(hostd.client.pay(&vm.vm_id, &second)).is_ok()
    })
    .await;
    assert!(receipt, "the VM could not be paid after the flood");
    let view = hostd.client.vm(&vm.vm_id).await.unwrap();
    assert_eq!((view.paid_index, view.state.as_str()), (2, "running"));
    let rss = rss_kib(hostd.pid());
    assert!(
        rss < baseline_rss + 32 * 1024,
        "hostd grew from {baseline_rss} KiB to {rss} KiB"
    );
}
