//! The client interface both runtimes serve (`guest-agentd` and the bench unikernel's
//! `workload=agent`): the JSON requests and answers, and how an agent answers them.
//!
//! The runtimes only move the bytes: each parses a [`Request`] from a frame, hands it to
//! [`ClientBook::answer`] and encodes the [`Response`]. Keeping the answering here means a
//! client (`guest-agentd publish|feed|stats|policy|place --to ...`) cannot tell a VM agent
//! from a daemon.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::placement::Limits;
use crate::timeline::{Params, Post, Publish, ReadFeed, Timeline};
use crate::{Agent, FutureId, Policy, Stats, Task, TaskResult};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Start a timeline read for `user`. `key` makes a retried submit idempotent.
    Timeline { user: u32, limit: u32, key: u64 },
    /// Append post `post` (a unique id) to `user`'s feed.
    Publish { user: u32, post: u64, key: u64 },
    /// Read the post ids of `user`'s feed.
    Feed { user: u32, key: u64 },
    /// A task's result, if it has arrived here (its origin).
    Result { future: FutureId },
    /// The agent's counters. (No fields, but braces: serde refuses unknown fields only in
    /// struct variants, and a request with a field it does not know is malformed.)
    Stats {},
    /// How reads of remote objects are served from now on.
    SetPolicy { policy: Policy },
    /// Run one placement pass now.
    Place {},
}

impl Request {
    /// Whether answering it changes the agent's state (so a durable runtime logs it).
    pub fn changes_state(&self) -> bool {
        !matches!(self, Request::Result { .. } | Request::Stats {})
    }
}

/// An answer. `V` is a finished task's value: [`Value`] where the agent answers, any JSON
/// value where a client reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response<V> {
    Submitted {
        future: FutureId,
    },
    Pending,
    Done {
        value: V,
    },
    Failed {
        reason: String,
    },
    Stats {
        stats: Stats,
        objects: u64,
        unacked: u64,
        moved: u64,
    },
    Ok,
    Error {
        reason: String,
    },
}

/// A finished client task's value, as JSON shows it (no tag: the request said what it is).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Posts(Vec<Post>),
    PostId(u64),
    PostIds(Vec<u64>),
}

/// What a submitted task's result is, to decode it for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResultKind {
    Posts,
    PostId,
    PostIds,
}

impl ResultKind {
    pub fn decode(self, bytes: &[u8]) -> Result<Value, postcard::Error> {
        Ok(match self {
            ResultKind::Posts => Value::Posts(postcard::from_bytes(bytes)?),
            ResultKind::PostId => Value::PostId(postcard::from_bytes(bytes)?),
            ResultKind::PostIds => Value::PostIds(postcard::from_bytes(bytes)?),
        })
    }
}

/// The client submits an agent has taken: each key's future, and what each future's result
/// is. Results themselves stay in the agent (`Agent::result`), where they came home.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientBook {
    /// Client idempotency keys: a retried submit gets the same future, never a second task.
    pub keys: BTreeMap<u64, FutureId>,
    pub kinds: BTreeMap<FutureId, ResultKind>,
}

impl ClientBook {
    /// Answers `request` on `agent`, which holds its share of `params`' data set. At most
    /// `max_kept` submits are kept (with their results); past that a new key is refused, so a
    /// runtime with bounded memory stays bounded. Submits only queue a task and a placement
    /// pass moves at most `Limits::default().budget` objects, so no answer does unbounded work.
    pub fn answer(
        &mut self,
        agent: &mut Agent,
        params: &Params,
        request: Request,
        max_kept: usize,
    ) -> Response<Value> {
        let known = |user: u32| user < params.users;
        match request {
            Request::Timeline { user, limit, key } if known(user) => {
                let task = Timeline::Start {
                    user: params.profile(user),
                    limit,
                };
                self.submit(agent, key, ResultKind::Posts, &task, max_kept)
            }
            Request::Publish { user, post, key } if known(user) => {
                let task = Publish {
                    feed: params.feed(user),
                    post: Post {
                        author: user,
                        id: post,
                        text: params.text(user, post),
                    },
                };
                self.submit(agent, key, ResultKind::PostId, &task, max_kept)
            }
            Request::Feed { user, key } if known(user) => {
                let task = ReadFeed {
                    feed: params.feed(user),
                };
                self.submit(agent, key, ResultKind::PostIds, &task, max_kept)
            }
            Request::Timeline { user, .. }
            | Request::Publish { user, .. }
            | Request::Feed { user, .. } => Response::Error {
                reason: format!("user {user} does not exist"),
            },
            Request::Result { future } => self.result(agent.result(future), future),
            Request::Stats {} => Response::Stats {
                stats: *agent.stats(),
                objects: agent.objects() as u64,
                unacked: agent.unacked() as u64,
                moved: agent.objects_moved(),
            },
            Request::SetPolicy { policy } => {
                agent.config_mut().policy = policy;
                Response::Ok
            }
            Request::Place {} => {
                agent.placement_pass(&Limits::default());
                Response::Ok
            }
        }
    }

    fn submit<T: Task>(
        &mut self,
        agent: &mut Agent,
        key: u64,
        kind: ResultKind,
        task: &T,
        max_kept: usize,
    ) -> Response<Value> {
        if let Some(&future) = self.keys.get(&key) {
            return Response::Submitted { future };
        }
        if self.keys.len() >= max_kept {
            return Response::Error {
                reason: format!("this agent keeps at most {max_kept} client submits"),
            };
        }
        match agent.submit(task) {
            Ok(future) => {
                self.keys.insert(key, future);
                self.kinds.insert(future, kind);
                Response::Submitted { future }
            }
            Err(error) => Response::Error {
                reason: format!("{error}"),
            },
        }
    }

    /// The answer to `result` for `future`, whose result here is `found`.
    fn result(&self, found: Option<&TaskResult>, future: FutureId) -> Response<Value> {
        let Some(&kind) = self.kinds.get(&future) else {
            return Response::Error {
                reason: format!("{future} was not submitted here"),
            };
        };
        match found {
            None => Response::Pending,
            Some(Err(reason)) => Response::Failed {
                reason: reason.clone(),
            },
            Some(Ok(bytes)) => match kind.decode(bytes) {
                Ok(value) => Response::Done { value },
                Err(error) => Response::Error {
                    reason: format!("the result does not decode: {error}"),
                },
            },
        }
    }

    /// Whether `future` is a client's submit (its result is the client's, not the runtime's).
    pub fn is_clients(&self, future: FutureId) -> bool {
        self.kinds.contains_key(&future)
    }
}
