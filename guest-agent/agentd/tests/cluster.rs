//! Three `guest-agentd` processes on loopback run the timeline example; one is killed with
//! SIGKILL and restarted mid-run. Nothing is lost, nothing runs twice.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest_agent::timeline::Params;
use guest_agent::FutureId;
use guest_agentd::api::{Client, Request, Response};

struct Cluster {
    dir: PathBuf,
    addrs: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

impl Cluster {
    fn start(name: &str, params: Params, wal_limit_bytes: u64) -> Cluster {
        let dir = std::env::temp_dir().join(format!("agentd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let addrs: Vec<SocketAddr> = (0..params.agents).map(|_| free_port()).collect();
        for id in 0..params.agents {
            let peers: BTreeMap<String, String> = (0..params.agents)
                .filter(|&p| p != id)
                .map(|p| (p.to_string(), addrs[usize::from(p)].to_string()))
                .collect();
            let config = serde_json::json!({
                "id": id,
                "listen": addrs[usize::from(id)].to_string(),
                "data_dir": dir.join(format!("agent{id}")),
                "peers": peers,
                "timeline": params,
                "rto_ms": 100,
                "wal_limit_bytes": wal_limit_bytes,
            });
            std::fs::write(dir.join(format!("agent{id}.json")), config.to_string()).unwrap();
        }
        let mut cluster = Cluster {
            dir,
            addrs,
            children: Vec::new(),
        };
        for id in 0..params.agents {
            let child = cluster.spawn(id);
            cluster.children.push(Some(child));
        }
        for addr in cluster.addrs.clone() {
            wait_for(addr);
        }
        cluster
    }

    fn spawn(&self, id: u16) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("agent{id}.log")))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_guest-agentd"))
            .args(["run", "--config"])
            .arg(self.dir.join(format!("agent{id}.json")))
            .env("AGENT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// SIGKILL (no chance to save anything), `between` on the dead agent's files, restart.
    fn kill_and_restart(&mut self, id: u16, between: impl FnOnce(&Path)) {
        let mut child = self.children[usize::from(id)].take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        between(&self.dir.join(format!("agent{id}")));
        self.children[usize::from(id)] = Some(self.spawn(id));
        wait_for(self.addrs[usize::from(id)]);
    }

    fn log(&self, id: u16) -> String {
        std::fs::read_to_string(self.dir.join(format!("agent{id}.log"))).unwrap_or_default()
    }
}

fn wait_for(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if Client::connect(addr, Duration::from_secs(1)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the agent at {addr} did not come up");
}

/// Calls until the agent answers (it may be restarting); the request must be idempotent.
fn call(addr: SocketAddr, request: &Request) -> Response {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer =
            Client::connect(addr, Duration::from_secs(5)).and_then(|mut c| c.call(request));
        match answer {
            Ok(response) => return response,
            Err(error) if Instant::now() < deadline => {
                eprintln!("retrying after: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => panic!("the agent at {addr} does not answer: {error}"),
        }
    }
}

fn submitted(response: Response) -> FutureId {
    match response {
        Response::Submitted { future } => future,
        other => panic!("expected a future, got {other:?}"),
    }
}

fn wait_result(addr: SocketAddr, future: FutureId) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call(addr, &Request::Result { future }) {
            Response::Done { value } => return value,
            Response::Pending if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("{future}: {other:?}"),
        }
    }
}

/// Publishes and timeline reads spread over the agents, with agent 1 killed (and `between`
/// done to its files) halfway; then checks every result and that every post is in its
/// author's feed exactly once.
fn run_with_a_kill(cluster: &mut Cluster, params: Params, between: impl FnOnce(&Path)) {
    let mut between = Some(between);
    let addrs = cluster.addrs.clone();
    let addr = |i: usize| addrs[i % 3];
    let mut publishes = Vec::new();
    let mut timelines = Vec::new();
    let requests = 90u64;
    for i in 0..requests {
        if let Some(between) = between.take_if(|_| i == requests / 2) {
            cluster.kill_and_restart(1, between);
        }
        let user = (i % u64::from(params.users)) as u32;
        let at = addr(i as usize);
        let post = 1_000_000 + i;
        let future = submitted(call(at, &Request::Publish { user, post, key: i }));
        publishes.push((at, future, user, post));
        let at = addr(i as usize + 1);
        let future = submitted(call(
            at,
            &Request::Timeline {
                user,
                limit: 10,
                key: 10_000 + i,
            },
        ));
        timelines.push((at, future));
    }
    // A retried submit (same key) is the same task, not a second one.
    let again = submitted(call(
        addr(3),
        &Request::Publish {
            user: 3,
            post: 1_000_003,
            key: 3,
        },
    ));
    assert_eq!(again, publishes[3].1);

    for (at, future, _, post) in &publishes {
        assert_eq!(
            wait_result(*at, *future),
            serde_json::json!(post),
            "{future}"
        );
    }
    for (at, future) in &timelines {
        let posts = wait_result(*at, *future);
        let posts = posts.as_array().expect("a timeline is a list of posts");
        assert!(
            !posts.is_empty() && posts.len() <= 10,
            "{future}: {} posts",
            posts.len()
        );
    }
    // Every published post is in its author's feed exactly once.
    let mut expected: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (_, _, user, post) in &publishes {
        expected.entry(*user).or_default().push(*post);
    }
    for (user, posts) in expected {
        let future = submitted(call(
            addr(0),
            &Request::Feed {
                user,
                key: 50_000 + u64::from(user),
            },
        ));
        let feed: Vec<u64> = serde_json::from_value(wait_result(addr(0), future)).unwrap();
        for post in posts {
            let times = feed.iter().filter(|&&p| p == post).count();
            assert_eq!(
                times, 1,
                "post {post} is in user {user}'s feed {times} times: {feed:?}"
            );
        }
    }
    assert!(
        cluster.log(1).contains("restored durable state"),
        "{}",
        cluster.log(1)
    );
}

#[test]
fn three_agents_survive_a_kill_mid_run_with_nothing_lost_or_repeated() {
    let params = Params {
        users: 45,
        agents: 3,
        ..Params::default()
    };
    let mut cluster = Cluster::start("kill", params, 8 << 20);
    run_with_a_kill(&mut cluster, params, |_| {});
}

/// The current log of a data dir (the one generation recovery keeps).
fn current_log(dir: &Path) -> PathBuf {
    let mut logs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let generation = path
                .file_name()?
                .to_str()?
                .strip_prefix("wal-")?
                .parse()
                .ok()?;
            Some((generation, path))
        })
        .collect();
    logs.sort();
    logs.pop().expect("a data dir holds a log").1
}

#[test]
fn a_torn_log_tail_is_dropped_and_compaction_keeps_the_log_bounded() {
    let params = Params {
        users: 45,
        agents: 3,
        ..Params::default()
    };
    let limit = 48 << 10;
    let mut cluster = Cluster::start("torn", params, limit);
    let mut generation_before = 0;
    run_with_a_kill(&mut cluster, params, |dir| {
        // A record cut short by the crash: a length promising more bytes than follow.
        let log = current_log(dir);
        generation_before = log
            .to_str()
            .unwrap()
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut torn = 600u32.to_le_bytes().to_vec();
        torn.extend_from_slice(&[0xab; 37]);
        let mut file = std::fs::OpenOptions::new().append(true).open(log).unwrap();
        std::io::Write::write_all(&mut file, &torn).unwrap();
    });
    let log = cluster.log(1);
    assert!(log.contains("dropped a torn record"), "{log}");
    assert!(generation_before > 0, "the log was never compacted: {log}");
    for id in 0..params.agents {
        let current = current_log(&cluster.dir.join(format!("agent{id}")));
        let len = std::fs::metadata(&current).unwrap().len();
        assert!(len < 2 * limit, "{} is {len} bytes", current.display());
    }
}

#[test]
fn a_config_naming_itself_as_peer_is_refused() {
    let dir = std::env::temp_dir().join(format!("agentd-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: &Path = &dir.join("bad.json");
    std::fs::write(
        path,
        r#"{"id":0,"listen":"127.0.0.1:1","data_dir":"/tmp/x","peers":{"0":"127.0.0.1:2"}}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_guest-agentd"))
        .args(["run", "--config"])
        .arg(path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("names agent 0 as its own peer"), "{stderr}");
}
