//! The guest agent in the bench unikernel (`workload=agent`): three VMs on one switch, each in
//! a namespace host of its own, run the timeline example against each other over virtio-net,
//! and one of them live-migrates to a fourth host mid-run. Every read must come home exactly
//! once with the right posts, and every task must complete exactly once across the agents.
//! A second test puts a Linux `guest-agentd` in place of one VM: the two runtimes speak the
//! same protocol, and a client (the daemon's CLI) reads timelines through a VM as through the
//! daemon, publishes through the VM and reads the feeds and the VM's counters. A third runs
//! a warm-up with placement passes before the measured reads. Every namespace, bridge and tap
//! is the test's own and goes when the `TestNetwork` is dropped, even on failure.
mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::hosts::Hosts;
use common::*;
use laundromat_tests::netns::{is_listening, Host, TestNetwork};
use laundromat_tests::process::BoundedChild;
use laundromat_tests::workspace::Workspace;

/// Generous: four VMs share two loaded cores.
const LIMIT: Duration = Duration::from_secs(90);
const TAP: &str = "vmtap0";
const PORT: u16 = 7000;
const AGENTS: u64 = 3;
/// Timeline reads per agent, and how many it starts per second: a run of several seconds, so
/// the migration lands in the middle of it.
const TASKS: u64 = 150;
const TASK_RATE: u64 = 25;
const USERS: u64 = 120;

fn guest_ip(agent: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 100 + agent as u8)
}

fn cmdline(agent: u64) -> String {
    cmdline_with(agent, guest_ip)
}

/// The command line of agent `agent` when agent `p` is at `addr(p)`.
fn cmdline_with(agent: u64, addr: impl Fn(u64) -> Ipv4Addr) -> String {
    let peers: Vec<String> = (0..AGENTS)
        .filter(|&p| p != agent)
        .map(|p| format!("peer={p}@{}:{PORT}", addr(p)))
        .collect();
    // The run ends long after the test does: the test stops the VMs once every agent is done.
    format!(
        "workload=agent ip={}/24 port={PORT} agent={agent} tasks={TASKS} task-rate={TASK_RATE} \
         users={USERS} report-ms=500 exit-after-ms=600000 {}",
        guest_ip(agent),
        peers.join(" ")
    )
}

/// Boots agent `agent` on `host`'s tap, with a control socket if `sock` is given.
fn boot(host: &Host, agent: u64, sock: Option<&std::path::Path>) -> Vmm {
    boot_with(host, agent, &cmdline(agent), sock)
}

fn boot_with(host: &Host, agent: u64, cmdline: &str, sock: Option<&std::path::Path>) -> Vmm {
    let mut cmd = host.command(vmm_bin());
    cmd.args(bench_args(64, 1, cmdline, sock));
    let mac = format!("52:54:00:77:01:{:02x}", agent + 1);
    cmd.args(["--net", &format!("tap={TAP},mac={mac}")]);
    let vm = Vmm::spawn_command(cmd);
    vm.wait_line(LIMIT, |l| l.contains(&format!("agent {agent} listening")));
    vm
}

fn is_progress(line: &str) -> bool {
    line.contains("bench: agent t=")
}

/// Checks an agent's `agent done` line: every read home once, each with the right posts.
fn check_done(agent: u64, done: &str) {
    check_reads(agent, done, TASKS);
}

/// Checks that an agent's line counts `reads` submitted, every one home once and right, and
/// nothing outstanding.
fn check_reads(agent: u64, done: &str, reads: u64) {
    assert_eq!(
        field(done, "submitted"),
        Some(reads),
        "agent {agent}: {done}"
    );
    assert_eq!(field(done, "results"), Some(reads), "agent {agent}: {done}");
    for key in [
        "wrong",
        "twice",
        "failed",
        "outstanding",
        "unacked",
        "bad-frames",
    ] {
        assert_eq!(field(done, key), Some(0), "agent {agent} {key}: {done}");
    }
}

/// The last progress line within a report period and more (call it once every agent is done:
/// its counts are then final).
fn final_report(vm: &Vmm) -> String {
    vm.lines_for(Duration::from_millis(1500))
        .into_iter()
        .rfind(|l| is_progress(l))
        .unwrap_or_else(|| vm.wait_line(LIMIT, is_progress))
}

#[test]
fn three_agent_vms_run_the_timeline_exactly_once_across_a_live_migration() {
    if !kvm_available() {
        return;
    }
    let _serial = serial();
    let net = TestNetwork::create(&["host-a", "host-b", "host-c", "host-d"])
        .expect("create the test hosts");
    let hosts: Vec<&Host> = ["host-a", "host-b", "host-c", "host-d"]
        .iter()
        .map(|name| net.host(name).unwrap())
        .collect();
    for host in &hosts {
        host.attach_tap(TAP).expect("a tap on each host");
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent2.sock");
    let url = format!("tcp://{}:4444", hosts[3].addr());

    // The destination for agent 2 waits on host-d.
    let identities = Hosts::new();
    let mut dst_cmd = hosts[3].command(vmm_bin());
    dst_cmd.args(identities.incoming_args(&url));
    dst_cmd.args(["--net", &format!("tap={TAP}")]);
    let dst = Vmm::spawn_command(dst_cmd);
    dst.wait_stderr("waiting for an incoming migration", LIMIT);

    let vm0 = boot(hosts[0], 0, None);
    let vm1 = boot(hosts[1], 1, None);
    let mut src = boot(hosts[2], 2, Some(&sock));

    // Mid-run: agent 2 has results home and most of its reads still to start. It starts 25 a
    // second throughout, each taking a few hops, so reads are in flight while the VM switches
    // hosts (a progress line rarely catches one: they finish in milliseconds).
    let seen = src.wait_line(LIMIT, |l| {
        is_progress(l) && field(l, "results").is_some_and(|r| r >= 20)
    });
    eprintln!("agent 2 migrates at: {seen}");
    assert!(
        field(&seen, "submitted").is_some_and(|r| r < TASKS),
        "the run ended before the migration could start: {seen}"
    );
    pair::migrate_completed(
        &sock,
        identities.params(url),
        &src,
        &dst,
        Duration::from_secs(120),
    );
    assert_eq!(src.wait_exit(LIMIT), Some(0), "{}", src.stderr());
    dst.wait_stderr("announced the guest's MAC", LIMIT);

    // Every agent finishes: agent 2 on host-d, with the reads it started on host-c.
    let vms = [&vm0, &vm1, &dst];
    for (agent, vm) in (0..AGENTS).zip(vms) {
        let done = vm.wait_line(LIMIT, |l| l.contains("bench: agent done"));
        check_done(agent, &done);
    }
    // With every result home, every task has completed: once each, over all agents. Their
    // counts a report later (every agent reports each 500 ms of its clock) are final.
    let mut completed = 0;
    let mut duplicates = 0;
    for (agent, vm) in (0..AGENTS).zip(vms) {
        let later = final_report(vm);
        eprintln!("agent {agent}: {later}");
        check_done(agent, &later);
        completed += field(&later, "completed").unwrap();
        duplicates += field(&later, "duplicates").unwrap();
    }
    assert_eq!(
        completed,
        AGENTS * TASKS,
        "every read completes exactly once over the agents ({duplicates} duplicate hops were \
         dropped)"
    );
    eprintln!("{completed} tasks completed once each; {duplicates} duplicate hops dropped");

    drop((vm0, vm1, dst));
    net.delete().expect("delete the test hosts");
}

#[test]
fn three_agent_vms_place_objects_in_a_warm_up_and_run_every_read_once() {
    if !kvm_available() {
        return;
    }
    let _serial = serial();
    let names = ["host-a", "host-b", "host-c"];
    let net = TestNetwork::create(&names).expect("create the test hosts");
    let mut vms = Vec::new();
    for (agent, name) in (0..AGENTS).zip(names) {
        let host = net.host(name).unwrap();
        host.attach_tap(TAP).expect("a tap");
        // Later keys win: a closed loop of 3 reads, after 3 s of warm-up in which each agent
        // runs a placement pass in its slot of every 600 ms.
        let line = format!(
            "{} task-rate=0 window=3 warmup-ms=3000 place-ms=600",
            cmdline(agent)
        );
        vms.push(boot_with(host, agent, &line, None));
    }
    let mut submitted = 0;
    for (agent, vm) in (0..AGENTS).zip(&vms) {
        let done = vm.wait_line(LIMIT, |l| l.contains("bench: agent done"));
        eprintln!("agent {agent}: {done}");
        assert_eq!(
            field(&done, "measured"),
            Some(TASKS),
            "agent {agent}: {done}"
        );
        let warm = field(&done, "warm").unwrap_or(0);
        assert!(warm > 0, "agent {agent} ran no warm-up reads: {done}");
        check_reads(agent, &done, warm + TASKS);
        assert!(
            field(&done, "passes").is_some_and(|p| p > 0),
            "agent {agent} ran no placement pass: {done}"
        );
        submitted += warm + TASKS;
    }
    // Every read, warm-up or measured, completed exactly once over the agents, with objects
    // moving under the tasks. With every agent done, the counts a report later are final.
    let (mut completed, mut moved) = (0, 0);
    for (agent, vm) in (0..AGENTS).zip(&vms) {
        let later = final_report(vm);
        eprintln!("agent {agent}: {later}");
        completed += field(&later, "completed").unwrap();
        moved += field(&later, "moved").unwrap();
    }
    assert_eq!(completed, submitted, "every read completes exactly once");
    assert!(moved > 0, "placement moved no object");
    drop(vms);
    net.delete().expect("delete the test hosts");
}

#[test]
fn a_guest_agentd_and_two_agent_vms_run_the_timeline_together() {
    if !kvm_available() {
        return;
    }
    let _serial = serial();
    let daemon = Workspace::locate()
        .and_then(|w| w.guest_agentd())
        .expect("guest-agentd is built");
    let net = TestNetwork::create(&["host-a", "host-b", "host-c"]).expect("create the test hosts");
    let hosts: Vec<&Host> = ["host-a", "host-b", "host-c"]
        .iter()
        .map(|name| net.host(name).unwrap())
        .collect();
    // Agent 0 is the daemon, on host-a's own address; agents 1 and 2 are VMs.
    let addr = |agent: u64| match agent {
        0 => hosts[0].addr(),
        n => guest_ip(n),
    };
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "id": 0,
        "listen": format!("{}:{PORT}", addr(0)),
        "data_dir": dir.path().join("agent0"),
        "peers": {"1": format!("{}:{PORT}", addr(1)), "2": format!("{}:{PORT}", addr(2))},
        // The unikernel's data set: `users=`, the rest guest-agentd's defaults.
        "timeline": {"users": USERS, "agents": AGENTS, "follows": 12, "communities": 6,
                     "posts_per_user": 8, "post_bytes": 120, "seed": 42},
    });
    let path = dir.path().join("agent0.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut cmd = hosts[0].command(&daemon);
    cmd.args(["run", "--config"]).arg(&path);
    let agentd = BoundedChild::spawn("guest-agentd", &mut cmd).expect("start guest-agentd");
    let listen = SocketAddrV4::new(addr(0), PORT);
    let deadline = Instant::now() + LIMIT;
    while !is_listening(agentd.pid(), listen).unwrap_or(false) {
        assert!(
            Instant::now() < deadline,
            "guest-agentd did not listen: {}",
            agentd.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut vms = Vec::new();
    for agent in 1..AGENTS {
        let host = hosts[agent as usize];
        host.attach_tap(TAP).expect("a tap");
        vms.push(boot_with(host, agent, &cmdline_with(agent, addr), None));
    }
    for (agent, vm) in (1..AGENTS).zip(&vms) {
        let done = vm.wait_line(LIMIT, |l| l.contains("bench: agent done"));
        check_done(agent, &done);
    }
    // A third of the data lives in the daemon: reads that end there completed there, so the
    // VMs completed fewer than they submitted, and still every result came home right.
    let mut completed = 0;
    for (agent, vm) in (1..AGENTS).zip(&vms) {
        let later = vm.wait_line(LIMIT, is_progress);
        eprintln!("agent {agent}: {later}");
        completed += field(&later, "completed").unwrap();
    }
    assert!(
        completed < (AGENTS - 1) * TASKS,
        "the daemon completed none of the VMs' reads ({completed} completed in the VMs)"
    );

    // A client (guest-agentd's own CLI) reads the same timelines through VM agent 1 and
    // through the daemon: the unikernel answers as the daemon does.
    let client = |args: &[&str]| -> String {
        let out = hosts[0]
            .command(&daemon)
            .args(args)
            .output()
            .expect("run the guest-agentd client");
        assert!(
            out.status.success(),
            "guest-agentd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for user in ["3", "42", "77"] {
        let mut answers = Vec::new();
        for agent in [1, 0] {
            let to = format!("{}:{PORT}", addr(agent));
            // A key per user: a key names one submit, whatever else the request says.
            let submit = ["timeline", "--to", &to, "--key", user, user];
            let submitted = client(&submit);
            assert_eq!(client(&submit), submitted, "a key submits once");
            let future: serde_json::Value = serde_json::from_str(&submitted)
                .unwrap_or_else(|e| panic!("agent {agent}: {submitted:?}: {e}"));
            let future = &future["submitted"]["future"];
            let id = format!("{}.{}", future["origin"], future["seq"]);
            let deadline = Instant::now() + LIMIT;
            let done = loop {
                let answer = client(&["result", "--to", &to, &id]);
                if answer != r#""pending""# {
                    break answer;
                }
                assert!(
                    Instant::now() < deadline,
                    "agent {agent}: {id} never came home"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(
                done.starts_with(r#"{"done":{"value":[{"#),
                "agent {agent}: {done}"
            );
            answers.push(done);
        }
        assert_eq!(
            answers[0], answers[1],
            "user {user}: the VM and the daemon disagree"
        );
    }
    // The rest of the interface, through the VM: a post published there lands in its
    // author's feed wherever that lives (once per key), and both runtimes' feeds show it.
    let vm1 = format!("{}:{PORT}", addr(1));
    let daemon0 = format!("{}:{PORT}", addr(0));
    let wait_done = |to: &str, submitted: &str| -> serde_json::Value {
        let answer: serde_json::Value =
            serde_json::from_str(submitted).unwrap_or_else(|e| panic!("{to}: {submitted:?}: {e}"));
        let future = &answer["submitted"]["future"];
        let id = format!("{}.{}", future["origin"], future["seq"]);
        let deadline = Instant::now() + LIMIT;
        loop {
            let answer = client(&["result", "--to", to, &id]);
            if answer != r#""pending""# {
                let done: serde_json::Value = serde_json::from_str(&answer)
                    .unwrap_or_else(|e| panic!("{to}: {answer:?}: {e}"));
                return done["done"]["value"].clone();
            }
            assert!(Instant::now() < deadline, "{to}: {id} never came home");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let post: u64 = 1 << 40;
    let publish = [
        "publish",
        "--to",
        &vm1,
        "--key",
        "10",
        "5",
        &post.to_string(),
    ];
    let published = client(&publish);
    assert_eq!(client(&publish), published, "a key publishes once");
    assert_eq!(wait_done(&vm1, &published), serde_json::json!(post));
    for (to, key) in [(&vm1, "11"), (&daemon0, "12")] {
        let ids = wait_done(to, &client(&["feed", "--to", to, "--key", key, "5"]));
        let ids = ids.as_array().unwrap_or_else(|| panic!("{to}: {ids}"));
        let with_post = ids.iter().filter(|&id| *id == serde_json::json!(post));
        assert_eq!(
            with_post.count(),
            1,
            "{to}: the feed has the post once: {ids:?}"
        );
        assert_eq!(
            ids.last(),
            Some(&serde_json::json!(post)),
            "{to}: newest last"
        );
    }
    // Its counters: every read it started and the client's five submits came home to it.
    let stats = client(&["stats", "--to", &vm1]);
    let answer: serde_json::Value =
        serde_json::from_str(&stats).unwrap_or_else(|e| panic!("{stats:?}: {e}"));
    let counters = &answer["stats"];
    assert_eq!(counters["stats"]["remembered"], TASKS + 5, "{stats}");
    assert!(
        counters["stats"]["task_bytes"].as_u64() > Some(0),
        "{stats}"
    );
    assert!(counters["objects"].as_u64() > Some(0), "{stats}");
    assert_eq!(client(&["policy", "--to", &vm1, "fetch"]), r#""ok""#);
    assert_eq!(client(&["place", "--to", &vm1]), r#""ok""#);
    drop(vms);
    drop(agentd);
    net.delete().expect("delete the test hosts");
}
