//! `kill -9` of hostd with VMs running, then a restart: the running VM is re-adopted with its
//! payment state, the one that died meanwhile is settled, and nothing is orphaned.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hostd_re_adopts_its_vms() {
    if !kvm_available() {
        return;
    }
    let kernel = bench_elf();
    let spec = TokenSpec::new(&kernel, IDLE);
    let mut kept = spec.buy();
    let mut lost = spec.buy();
    let mut hostd = Hostd::start(&[], &[&kept, &lost], &[]);
    let vm = hostd.admit(&kept, &kernel, IDLE).await.unwrap();
    let dying = hostd.admit(&lost, &kernel, IDLE).await.unwrap();
    let second = kept.payer.pay(2).unwrap();
    hostd.client.pay(&vm.vm_id, &second).await.unwrap();
    hostd
        .client
        .pay(&dying.vm_id, &lost.payer.pay(1).unwrap())
        .await
        .unwrap();

    hostd.kill9();
    let (pid, dying_pid) = (vm.pid.unwrap(), dying.pid.unwrap());
    assert!(
        process_alive(pid) && process_alive(dying_pid),
        "VMs must outlive hostd"
    );
    // One VM dies while no hostd watches it.
    // SAFETY: kill takes plain integers; the pid was just seen alive.
    unsafe { libc::kill(dying_pid as i32, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(10), || !process_alive(dying_pid)).await);

    hostd.spawn();
    let vms = hostd.client.list().await.unwrap();
    assert_eq!(vms.len(), 1, "{vms:?}");
    let adopted = &vms[0];
    assert_eq!(
        (adopted.vm_id.as_str(), adopted.pid),
        (vm.vm_id.as_str(), Some(pid))
    );
    assert_eq!((adopted.paid_index, adopted.state.as_str()), (2, "running"));
    assert_eq!(adopted.admitted_at_ms, vm.admitted_at_ms);
    // The dead one was settled: its link redeemed, its lease released, its files gone.
    let broker = hostd.broker();
    assert_eq!(broker.redeemed.get(&lost.token().token_id), Some(&1));
    assert!(!broker.leases.contains_key(&lost.token().token_id));
    assert!(broker.leases.contains_key(&kept.token().token_id));
    assert_eq!(hostd.vm_dirs(), 1);

    // The console flows again through the new hostd: the guest reports every 100 ms.
    let (_, start) = hostd
        .client
        .console(&vm.vm_id, 0, &kept.tenant)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            let (bytes, _) =
                futures_block(hostd.client.console(&vm.vm_id, start, &kept.tenant)).unwrap();
            String::from_utf8_lossy(&bytes).contains("t=")
        })
        .await,
        "no console output after re-adoption:\n{}",
        hostd.log()
    );
    // Payments continue from the persisted link; the old one is a replay.
    let replay = hostd.client.pay(&vm.vm_id, &second).await.unwrap_err();
    assert_eq!(replay.code(), Some("replayed"));
    assert_eq!(
        hostd
            .client
            .pay(&vm.vm_id, &kept.payer.pay(1).unwrap())
            .await
            .unwrap()
            .index,
        3
    );

    hostd.client.stop(&vm.vm_id, &kept.tenant).await.unwrap();
    assert!(!process_alive(pid));
    assert!(processes_under(&hostd.data_dir().join("vms")).is_empty());
    assert_eq!(
        hostd.broker().redeemed.get(&kept.token().token_id),
        Some(&3)
    );
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let mut hostd = Hostd::start(&[], &[], &[]);
    let pid = hostd.pid();
    // SAFETY: kill takes plain integers; the pid is our child's.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = hostd
        .wait(Duration::from_secs(20))
        .expect("hostd did not exit on SIGTERM");
    assert!(status.success(), "{status}:\n{}", hostd.log());
    assert!(hostd.log().contains("shutting down"));
}
