//! `workload=agent`'s client interface: a subset of `guest-agentd`'s, the same JSON in the same
//! frames after a `C` on the agent's port. `{"op":"timeline","user":U,"limit":L,"key":K}`
//! submits a timeline read (a key already used returns the same future, never a second read)
//! and `{"op":"result","future":{"origin":O,"seq":S}}` answers `"pending"` until the posts are
//! home, then `{"done":{"value":[...]}}`, as the daemon does. Other requests (`publish`, `feed`,
//! `stats`, `set-policy`, `place`) get `{"error":{"reason":...}}`. All of it is guest memory, so
//! a migration carries submitted reads and their results.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use guest_agent::timeline::{Params, Post, Timeline};
use guest_agent::{Agent, Event, FutureId, TaskResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
enum Request {
    Timeline { user: u32, limit: u32, key: u64 },
    Result { future: FutureId },
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Response {
    Submitted { future: FutureId },
    Pending,
    Done { value: Vec<Post> },
    Failed { reason: String },
    Error { reason: String },
}

/// The reads clients submitted here, by key, and their results once home (kept, as the
/// daemon keeps them, so asking again gives the same answer).
#[derive(Debug)]
pub struct Clients {
    params: Params,
    keys: BTreeMap<u64, FutureId>,
    waiting: BTreeSet<FutureId>,
    results: BTreeMap<FutureId, TaskResult>,
}

impl Clients {
    /// Clients of an agent holding its share of `params`' data set.
    pub fn new(params: Params) -> Self {
        Clients {
            params,
            keys: BTreeMap::new(),
            waiting: BTreeSet::new(),
            results: BTreeMap::new(),
        }
    }

    /// Answers one request frame; returns the answer's JSON.
    pub fn answer(&mut self, agent: &mut Agent, frame: &[u8]) -> Vec<u8> {
        let users = self.params.users;
        let response = match serde_json::from_slice::<Request>(frame) {
            Err(error) => Response::Error {
                reason: format!(
                    "the request is not one this agent serves (timeline and result): {error}"
                ),
            },
            Ok(Request::Timeline { user, .. }) if user >= users => Response::Error {
                reason: format!("user {user} does not exist"),
            },
            Ok(Request::Timeline { user, limit, key }) => self.submit(agent, user, limit, key),
            Ok(Request::Result { future }) => self.result(future),
        };
        // Nothing in an answer fails to encode; should it, the client still gets an answer.
        serde_json::to_vec(&response)
            .unwrap_or_else(|_| br#"{"error":{"reason":"the answer does not encode"}}"#.to_vec())
    }

    fn submit(&mut self, agent: &mut Agent, user: u32, limit: u32, key: u64) -> Response {
        if let Some(&future) = self.keys.get(&key) {
            return Response::Submitted { future };
        }
        let task = Timeline::Start {
            user: self.params.profile(user),
            limit,
        };
        match agent.submit(&task) {
            Ok(future) => {
                self.keys.insert(key, future);
                self.waiting.insert(future);
                Response::Submitted { future }
            }
            Err(error) => Response::Error {
                reason: format!("{error}"),
            },
        }
    }

    fn result(&self, future: FutureId) -> Response {
        match self.results.get(&future) {
            Some(Ok(bytes)) => match postcard::from_bytes::<Vec<Post>>(bytes) {
                Ok(value) => Response::Done { value },
                Err(error) => Response::Error {
                    reason: format!("the result does not decode: {error}"),
                },
            },
            Some(Err(reason)) => Response::Failed {
                reason: reason.clone(),
            },
            None if self.waiting.contains(&future) => Response::Pending,
            None => Response::Error {
                reason: format!("{future} was not submitted here"),
            },
        }
    }

    /// Takes the results of the clients' reads out of `events` (from [`Agent::take_events`]);
    /// returns the others.
    pub fn observe(&mut self, agent: &mut Agent, events: Vec<Event>) -> Vec<Event> {
        events
            .into_iter()
            .filter(|event| match event {
                Event::Remembered(fut) if self.waiting.remove(fut) => {
                    if let Some(result) = agent.take_result(*fut) {
                        self.results.insert(*fut, result);
                    }
                    false
                }
                _ => true,
            })
            .collect()
    }

    /// Client reads submitted and not home yet.
    pub fn outstanding(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::lone_agent;
    use super::super::{expected_timeline, params};
    use super::*;

    fn ask(clients: &mut Clients, agent: &mut Agent, json: &str) -> String {
        let answer = clients.answer(agent, json.as_bytes());
        String::from_utf8(answer).unwrap()
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
        let left = clients.observe(&mut agent, events);
        assert_eq!(
            left.len(),
            1,
            "the completion is not the clients' business: {left:?}"
        );
        let done = ask(&mut clients, &mut agent, result);
        let posts = expected_timeline(&params, 7, 10);
        assert!(!posts.is_empty());
        let want = serde_json::to_string(&Response::Done { value: posts }).unwrap();
        assert_eq!(done, want);
        assert_eq!(ask(&mut clients, &mut agent, result), want, "kept");
        assert_eq!(clients.outstanding(), 0);
    }

    #[test]
    fn other_requests_get_an_error_answer() {
        let params = params(30, 1);
        let mut agent = lone_agent(&params);
        let mut clients = Clients::new(params);
        for (json, reason) in [
            (r#"{"op":"stats"}"#, "timeline and result"),
            (r#"{"op":"place"}"#, "timeline and result"),
            ("not json", "timeline and result"),
            (
                r#"{"op":"timeline","user":30,"limit":10,"key":1}"#,
                "user 30 does not exist",
            ),
            (
                r#"{"op":"result","future":{"origin":0,"seq":9}}"#,
                "was not submitted here",
            ),
        ] {
            let answer = ask(&mut clients, &mut agent, json);
            assert!(
                answer.starts_with(r#"{"error":{"reason":""#),
                "{json}: {answer}"
            );
            assert!(answer.contains(reason), "{json}: {answer}");
        }
    }
}
