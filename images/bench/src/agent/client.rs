//! `workload=agent`'s client interface: `guest-agentd`'s, the same JSON in the same frames
//! after a `C` on the agent's port, answered by the same code (`guest_agent::client`), so the
//! daemon's CLI (`guest-agentd timeline|publish|feed|result|stats|policy|place --to IP:PORT`)
//! works against a VM agent unchanged. `timeline`, `publish` and `feed` submit a task (a key
//! already used returns the same future, never a second task); `result` answers `"pending"`
//! until the task's value is home, then `{"done":{"value":...}}`; `stats`, `set-policy` and
//! `place` (one placement pass, bounded like the scheduled ones) act at once. All of it is
//! guest memory, so a migration carries submitted tasks and their results.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::vec::Vec;

use guest_agent::client::{ClientBook, Request, Response, Value};
use guest_agent::timeline::Params;
use guest_agent::{Agent, Event, FutureId};

/// Client submits an agent keeps, with their results (a timeline's is about 1.5 KiB): enough
/// for tests and the CLI, and a bound on what clients can make a VM agent hold.
pub const MAX_KEPT: usize = 4096;

/// The client submits taken here and which of them are not home yet.
#[derive(Debug)]
pub struct Clients {
    params: Params,
    book: ClientBook,
    waiting: BTreeSet<FutureId>,
}

impl Clients {
    /// Clients of an agent holding its share of `params`' data set.
    pub fn new(params: Params) -> Self {
        Clients {
            params,
            book: ClientBook::default(),
            waiting: BTreeSet::new(),
        }
    }

    /// Answers one request frame; returns the answer's JSON.
    pub fn answer(&mut self, agent: &mut Agent, frame: &[u8]) -> Vec<u8> {
        let response = match serde_json::from_slice::<Request>(frame) {
            Err(error) => Response::Error {
                reason: format!("the request is not valid: {error}"),
            },
            Ok(request) => {
                let response = self.book.answer(agent, &self.params, request, MAX_KEPT);
                if let Response::Submitted { future } = response {
                    if agent.result(future).is_none() {
                        self.waiting.insert(future);
                    }
                }
                response
            }
        };
        // Nothing in an answer fails to encode; should it, the client still gets an answer.
        serde_json::to_vec::<Response<Value>>(&response)
            .unwrap_or_else(|_| br#"{"error":{"reason":"the answer does not encode"}}"#.to_vec())
    }

    /// Takes the clients' results out of `events` (from [`Agent::take_events`]): they stay in
    /// the agent for `result` to read. Returns the other events.
    pub fn observe(&mut self, events: Vec<Event>) -> Vec<Event> {
        events
            .into_iter()
            .filter(|event| match event {
                Event::Remembered(fut) if self.book.is_clients(*fut) => {
                    self.waiting.remove(fut);
                    false
                }
                _ => true,
            })
            .collect()
    }

    /// Client submits not home yet.
    pub fn outstanding(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::String;

    use super::super::testing::{lone_agent, lossy_swarm};
    use super::super::{expected_timeline, params};
    use super::*;
    use guest_agent::sim::Swarm;
    use guest_agent::timeline::Post;
    use guest_agent::Policy;

    fn ask(clients: &mut Clients, agent: &mut Agent, json: &str) -> String {
        let answer = clients.answer(agent, json.as_bytes());
        String::from_utf8(answer).unwrap()
    }

    fn json(value: &Response<Value>) -> String {
        serde_json::to_string(value).unwrap()
    }

    /// Runs the swarm until it is quiet, handing agent 0's events to `clients` as the guest
    /// does; returns agent 0's events the clients left.
    fn settle(swarm: &mut Swarm, clients: &mut Clients) -> Vec<Event> {
        assert!(swarm.run_until_quiet(8, 20_000), "the swarm never settled");
        let mine = core::mem::take(&mut swarm.events)
            .into_iter()
            .filter(|(id, _)| id.0 == 0)
            .map(|(_, event)| event)
            .collect();
        clients.observe(mine)
    }

    #[test]
    fn a_client_submits_a_read_once_per_key_and_reads_its_posts() {
        let params = params(30, 1);
        let mut agent = lone_agent(&params);
        let mut clients = Clients::new(params);
        let submit = r#"{"op":"timeline","user":7,"limit":10,"key":1}"#;
        let submitted = r#"{"submitted":{"future":{"origin":0,"seq":1}}}"#;
        assert_eq!(ask(&mut clients, &mut agent, submit), submitted);
        assert_eq!(ask(&mut clients, &mut agent, submit), submitted, "same key");
        let result = r#"{"op":"result","future":{"origin":0,"seq":1}}"#;
        assert_eq!(ask(&mut clients, &mut agent, result), r#""pending""#);
        assert_eq!(clients.outstanding(), 1);
        agent.run(10_000);
        let events = agent.take_events();
        assert_eq!(events.len(), 2, "completed and remembered");
        let left = clients.observe(events);
        assert_eq!(
            left.len(),
            1,
            "the completion is not the clients' business: {left:?}"
        );
        let done = ask(&mut clients, &mut agent, result);
        let posts = expected_timeline(&params, 7, 10);
        assert!(!posts.is_empty());
        let want = json(&Response::Done {
            value: Value::Posts(posts),
        });
        assert_eq!(done, want);
        assert_eq!(ask(&mut clients, &mut agent, result), want, "kept");
        assert_eq!(clients.outstanding(), 0);
        assert_eq!(ask(&mut clients, &mut agent, submit), submitted, "done");
        assert_eq!(clients.outstanding(), 0, "a done submit is not waited for");
    }

    /// A post published at one agent lands in its author's feed wherever that lives, once per
    /// key, and the timelines of the author's followers show it, over a lossy network.
    #[test]
    fn publish_then_feed_and_timeline_show_the_post_once_over_a_lossy_swarm() {
        let params = params(60, 3);
        let mut swarm = lossy_swarm(&params, 50, guest_agent::Config::default(), 11);
        let mut clients = Clients::new(params);
        let (author, follower) = (0..60)
            .flat_map(|f| params.follows_of(f).into_iter().map(move |a| (a, f)))
            .find(|&(a, _)| params.feed(a).hint.0 != 0)
            .unwrap();
        let post = 1u64 << 40;
        let publish = format!(r#"{{"op":"publish","user":{author},"post":{post},"key":5}}"#);
        let a0 = &mut swarm.agents[0];
        let submitted = ask(&mut clients, a0, &publish);
        assert_eq!(submitted, ask(&mut clients, a0, &publish), "same key");
        let left = settle(&mut swarm, &mut clients);
        assert!(
            !left.iter().any(|e| matches!(e, Event::Remembered(_))),
            "{left:?}"
        );
        assert_eq!(clients.outstanding(), 0);
        let a0 = &mut swarm.agents[0];
        let result = r#"{"op":"result","future":{"origin":0,"seq":1}}"#;
        assert_eq!(
            ask(&mut clients, a0, result),
            json(&Response::Done {
                value: Value::PostId(post)
            })
        );
        // The same key again is the same future, not a second post.
        assert_eq!(ask(&mut clients, a0, &publish), submitted);
        let feed = format!(r#"{{"op":"feed","user":{author},"key":6}}"#);
        let timeline = format!(r#"{{"op":"timeline","user":{follower},"limit":3,"key":7}}"#);
        ask(&mut clients, a0, &feed);
        ask(&mut clients, a0, &timeline);
        assert_eq!(clients.outstanding(), 2);
        settle(&mut swarm, &mut clients);
        let a0 = &mut swarm.agents[0];
        let mut ids: Vec<u64> = (0..params.posts_per_user)
            .map(|i| u64::from(i) << 32 | u64::from(author))
            .collect();
        ids.push(post);
        let feed = ask(
            &mut clients,
            a0,
            r#"{"op":"result","future":{"origin":0,"seq":2}}"#,
        );
        assert_eq!(
            feed,
            json(&Response::Done {
                value: Value::PostIds(ids)
            })
        );
        let read = ask(
            &mut clients,
            a0,
            r#"{"op":"result","future":{"origin":0,"seq":3}}"#,
        );
        let newest = Post {
            author,
            id: post,
            text: params.text(author, post),
        };
        let mut want = alloc::vec![newest];
        want.extend(expected_timeline(&params, follower, 2));
        assert_eq!(
            read,
            json(&Response::Done {
                value: Value::Posts(want)
            })
        );
    }

    #[test]
    fn stats_policy_and_place_act_on_the_agent() {
        let params = params(60, 3);
        let mut swarm = lossy_swarm(&params, 0, guest_agent::Config::default(), 3);
        let mut clients = Clients::new(params);
        for user in 0..20 {
            let read = format!(r#"{{"op":"timeline","user":{user},"limit":5,"key":{user}}}"#);
            ask(&mut clients, &mut swarm.agents[0], &read);
        }
        settle(&mut swarm, &mut clients);
        let a0 = &mut swarm.agents[0];
        let stats = ask(&mut clients, a0, r#"{"op":"stats"}"#);
        let want = Response::<Value>::Stats {
            stats: *a0.stats(),
            objects: a0.objects() as u64,
            unacked: 0,
            moved: 0,
        };
        assert_eq!(stats, json(&want));
        assert!(
            a0.stats().remembered == 20 && a0.stats().task_bytes > 0,
            "{stats}"
        );
        // The daemon's CLI sends the policy as serde names it.
        let policy = r#"{"op":"set-policy","policy":"Fetch"}"#;
        assert_eq!(ask(&mut clients, a0, policy), r#""ok""#);
        assert_eq!(a0.config_mut().policy, Policy::Fetch);
        let bad = r#"{"op":"set-policy","policy":"teleport"}"#;
        assert!(ask(&mut clients, a0, bad).contains("unknown variant"));
        assert_eq!(a0.config_mut().policy, Policy::Fetch, "unchanged");
        // What the agent knows of its peers' loads and pairs comes with the shares.
        for agent in swarm.agents.iter_mut() {
            agent.report_load();
            agent.share_pairs();
            agent.share_directory();
        }
        settle(&mut swarm, &mut clients);
        let a0 = &mut swarm.agents[0];
        let objects = a0.objects();
        assert_eq!(ask(&mut clients, a0, r#"{"op":"place"}"#), r#""ok""#);
        let moved = a0.objects_moved();
        assert!(
            moved > 0 && moved <= 64,
            "one pass moves objects, within its budget: {moved}"
        );
        assert_eq!(a0.objects() as u64, objects as u64 - moved);
        let stats = ask(&mut clients, a0, r#"{"op":"stats"}"#);
        assert!(stats.contains(&format!(r#""moved":{moved}}}"#)), "{stats}");
    }

    #[test]
    fn malformed_and_out_of_range_requests_get_an_error_answer() {
        let params = params(30, 1);
        let mut agent = lone_agent(&params);
        let mut clients = Clients::new(params);
        for (json, reason) in [
            ("not json", "not valid"),
            ("", "not valid"),
            (r#"{"op":"teleport"}"#, "unknown variant"),
            (
                r#"{"op":"feed","user":1,"key":1,"extra":1}"#,
                "unknown field",
            ),
            (r#"{"op":"stats","extra":1}"#, "unknown field"),
            (r#"{"op":"place","budget":1000000}"#, "unknown field"),
            (
                r#"{"op":"publish","user":1,"post":2}"#,
                "missing field `key`",
            ),
            (r#"{"op":"feed","user":-1,"key":1}"#, "not valid"),
            (r#"{"op":"feed","user":4294967296,"key":1}"#, "not valid"),
            (
                r#"{"op":"timeline","user":"7","limit":1,"key":1}"#,
                "not valid",
            ),
            (
                r#"{"op":"timeline","user":30,"limit":10,"key":1}"#,
                "user 30 does not exist",
            ),
            (
                r#"{"op":"publish","user":4294967295,"post":1,"key":2}"#,
                "user 4294967295 does not exist",
            ),
            (
                r#"{"op":"feed","user":31,"key":3}"#,
                "user 31 does not exist",
            ),
            (
                r#"{"op":"result","future":{"origin":0,"seq":9}}"#,
                "was not submitted here",
            ),
            (r#"{"op":"result","future":{"origin":0}}"#, "missing field"),
        ] {
            let answer = ask(&mut clients, &mut agent, json);
            assert!(
                answer.starts_with(r#"{"error":{"reason":""#),
                "{json}: {answer}"
            );
            assert!(answer.contains(reason), "{json}: {answer}");
        }
        assert_eq!(clients.outstanding(), 0, "nothing was submitted");
        assert_eq!(agent.runnable(), 0);
    }

    #[test]
    fn an_agent_keeps_a_bounded_number_of_client_submits() {
        let params = params(30, 1);
        let mut agent = lone_agent(&params);
        let mut clients = Clients::new(params);
        for key in 0..MAX_KEPT {
            let feed = format!(r#"{{"op":"feed","user":1,"key":{key}}}"#);
            assert!(ask(&mut clients, &mut agent, &feed).starts_with(r#"{"submitted""#));
        }
        let again = r#"{"op":"feed","user":1,"key":0}"#;
        assert!(ask(&mut clients, &mut agent, again).starts_with(r#"{"submitted""#));
        let more = format!(r#"{{"op":"feed","user":1,"key":{MAX_KEPT}}}"#);
        let answer = ask(&mut clients, &mut agent, &more);
        assert!(answer.contains("at most 4096 client submits"), "{answer}");
        assert_eq!(agent.runnable(), MAX_KEPT);
    }
}
