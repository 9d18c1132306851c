//! Tests of the bench guest's command line parser.
use super::*;

#[test]
fn empty_line_gives_the_defaults() {
    assert_eq!(parse(b""), Ok(Config::default()));
    assert_eq!(parse(b"  \t \n"), Ok(Config::default()));
    let d = Config::default();
    assert_eq!(
        (d.workload, d.wss_mib, d.rate, d.report_ms, d.exit_after_ms),
        (Workload::Idle, 16, 0, 1000, 0)
    );
}

#[test]
fn parses_every_key() {
    let c = parse(b"workload=dirty wss=64  rate=5000\treport-ms=250 exit-after-ms=3000").unwrap();
    assert_eq!(
        c,
        Config {
            workload: Workload::Dirty,
            wss_mib: 64,
            rate: 5000,
            report_ms: 250,
            exit_after_ms: 3000,
            ..Config::default()
        }
    );
    assert_eq!(parse(b"workload=idle").unwrap().workload, Workload::Idle);
    assert_eq!(
        parse(b"workload=blk-read wss=64").unwrap().workload,
        Workload::BlkRead
    );
}

#[test]
fn display_round_trips_and_deadline_follows_exit_after() {
    let c = parse(b"workload=dirty wss=8 exit-after-ms=3000").unwrap();
    assert_eq!(
        c.to_string(),
        "workload=dirty wss=8 rate=0 report-ms=1000 exit-after-ms=3000"
    );
    assert_eq!(parse(c.to_string().as_bytes()), Ok(c));
    assert_eq!(c.deadline_ns(), 3_000_000_000);
    assert_eq!(Config::default().deadline_ns(), u64::MAX);
}

#[test]
fn parses_the_network_keys() {
    let line = b"workload=http ip=10.77.0.10/24 gw=10.77.0.1 mac=52:54:00:00:00:0a port=8080 size=1000 conns=80";
    let c = parse(line).unwrap();
    assert_eq!(
        c.ip,
        Some(Cidr {
            addr: [10, 77, 0, 10],
            prefix: 24
        })
    );
    assert_eq!(c.gw, Some([10, 77, 0, 1]));
    assert_eq!(c.mac, Some([0x52, 0x54, 0, 0, 0, 0x0a]));
    assert_eq!((c.port, c.size, c.conns), (8080, 1000, 80));
    assert_eq!(parse(c.to_string().as_bytes()), Ok(c));
    assert_eq!(
        parse(b"ip=10.77.0"),
        Err(Error::BadAddress {
            key: "ip",
            value: "10.77.0"
        })
    );
    assert!(parse(b"port=0").is_err());
    assert!(parse(b"port=65536").is_err());
}

#[test]
fn parses_the_agent_keys() {
    let line = b"workload=agent ip=10.77.0.100/24 port=7000 agent=0 tasks=200 task-rate=20 users=90 window=3 policy=ship-or-fetch warmup-ms=6000 place-ms=1500 peer=1@10.77.0.101:7000 peer=2@10.77.0.102:7001";
    let c = parse(line).unwrap();
    assert_eq!(c.workload, Workload::Agent);
    assert_eq!(
        (c.agent, c.tasks, c.task_rate, c.users, c.window),
        (0, 200, 20, 90, 3)
    );
    assert_eq!(c.policy, Policy::ShipOrFetch);
    assert_eq!((c.warmup_ms, c.place_ms), (6000, 1500));
    assert_eq!(parse(b"policy=fetch").unwrap().policy, Policy::Fetch);
    assert!(parse(b"policy=teleport").is_err());
    let peers: Vec<Peer> = c.peers().collect();
    assert_eq!(
        peers,
        [
            Peer {
                id: 1,
                addr: [10, 77, 0, 101],
                port: 7000
            },
            Peer {
                id: 2,
                addr: [10, 77, 0, 102],
                port: 7001
            },
        ]
    );
    assert_eq!(parse(c.to_string().as_bytes()), Ok(c));
    // The same peer again replaces its address.
    let c = parse(b"peer=1@10.0.0.1:1 peer=1@10.0.0.2:2").unwrap();
    assert_eq!(c.peers().count(), 1);
    assert_eq!(c.peers().next().map(|p| p.port), Some(2));
    for bad in [
        "1@10.0.0.1",
        "x@10.0.0.1:1",
        "1@10.0.0:1",
        "1@10.0.0.1:0",
        "70000@10.0.0.1:1",
        "1@10.0.0.1:+5",
    ] {
        let line = format!("peer={bad}");
        assert!(
            matches!(
                parse(line.as_bytes()),
                Err(Error::BadAddress { key: "peer", .. })
            ),
            "{bad}"
        );
    }
    let many: Vec<String> = (0..=MAX_PEERS)
        .map(|i| format!("peer={i}@10.0.0.1:7000"))
        .collect();
    assert_eq!(parse(many.join(" ").as_bytes()), Err(Error::TooManyPeers));
}

#[test]
fn last_value_wins() {
    assert_eq!(parse(b"wss=1 wss=2").unwrap().wss_mib, 2);
}

#[test]
fn rejects_bad_input_with_the_offending_text() {
    assert_eq!(parse(b"wss"), Err(Error::NotKeyValue("wss")));
    assert_eq!(parse(b"color=blue"), Err(Error::UnknownKey("color")));
    assert_eq!(parse(b"workload=fast"), Err(Error::BadWorkload("fast")));
    assert_eq!(parse(b"\xff"), Err(Error::NotUtf8));
    for bad in [
        "wss=0",
        "wss=",
        "wss=+5",
        "wss=-1",
        "wss=1x",
        "wss=99999999999999999999",
    ] {
        let err = parse(bad.as_bytes()).unwrap_err();
        assert!(
            matches!(err, Error::BadNumber { key: "wss", .. }),
            "{bad}: {err:?}"
        );
    }
    assert!(matches!(
        parse(b"report-ms=0"),
        Err(Error::BadNumber {
            key: "report-ms",
            ..
        })
    ));
    assert!(parse(b"rate=0 exit-after-ms=0").is_ok());
}

#[test]
fn messages_name_the_problem_and_the_choices() {
    let msg = parse(b"colour=1").unwrap_err().to_string();
    assert_eq!(
        msg,
        "unknown key \"colour\"; the keys are workload, wss, rate, report-ms, exit-after-ms, \
         port, size, conns, evil, agent, tasks, task-rate, users, window, warmup-ms, place-ms, \
         ip, gw, mac, peer, policy"
    );
    let msg = parse(b"workload=x").unwrap_err().to_string();
    assert_eq!(
        msg,
        "unknown workload \"x\"; the workloads are idle, dirty, http, evil-net, blk, blk-read, \
         agent"
    );
    let msg = parse(b"wss=0").unwrap_err().to_string();
    assert_eq!(
        msg,
        "bad value \"0\" for wss: expected a whole number from 1 to 1048576"
    );
}
