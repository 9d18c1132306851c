//! Applying hops that arrived: tasks, results, fetches and objects.

use super::{Agent, Parked};
use crate::ids::{AgentId, ObjectId};
use crate::store::{Route, Seen};
use crate::wire::{Fetched, Payload};

impl Agent {
    /// Applies one hop from `from`, exactly once.
    pub(super) fn apply(&mut self, payload: Payload) {
        let me = self.st.id;
        match payload {
            Payload::Task(record) => match self.registry.check(&record.state.kind) {
                Ok(()) => self.st.runnable.push_back(record),
                Err(refused) => {
                    let why = alloc::format!("{me} refused the task: {refused}");
                    self.finish(record, Err(why));
                }
            },
            Payload::Result { fut, result } => {
                if fut.origin == me {
                    self.remember(fut, result);
                } else {
                    self.send(fut.origin, Payload::Result { fut, result });
                }
            }
            Payload::Fetch {
                object,
                requester,
                limit,
                epoch,
            } => {
                self.serve_fetch(object, requester, limit, epoch);
            }
            Payload::Fetched {
                object,
                at,
                epoch,
                found,
            } => {
                let size = match &found {
                    Fetched::Copy(bytes) => u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                    Fetched::TooBig { size } => *size,
                    Fetched::Missing => 0,
                };
                if !matches!(found, Fetched::Missing) {
                    self.st.store.learn(object, Seen { at, epoch, size });
                }
                for mut record in self.st.fetching.remove(&object).unwrap_or_default() {
                    match &found {
                        Fetched::Copy(bytes) => {
                            record.copies.push((object, bytes.clone()));
                            self.st.runnable.push_back(record);
                        }
                        Fetched::TooBig { .. } => {
                            record.via_pointer = Some(epoch);
                            self.ship(record, at);
                        }
                        Fetched::Missing => {
                            self.finish(record, Err(alloc::format!("{object} does not exist")))
                        }
                    }
                }
            }
            Payload::Object { id, epoch, bytes } => {
                self.st.store.arrive(id, epoch, bytes);
                self.st.stats.objects_received += 1;
                // Damping holds on both ends: without it the receiver's next pass could send
                // a fresh arrival on at once, and objects never settled.
                let pass = self.st.placement.passes;
                self.st.placement.moved_at.insert(id, pass);
                for parked in self.st.arriving.remove(&id).unwrap_or_default() {
                    match parked {
                        Parked::Task(record) => self.st.runnable.push_back(record),
                        Parked::Fetch { requester, limit } => {
                            self.serve_fetch(id, requester, limit, Some(epoch))
                        }
                    }
                }
            }
        }
    }

    fn serve_fetch(
        &mut self,
        object: ObjectId,
        requester: AgentId,
        limit: u32,
        claim: Option<u32>,
    ) {
        let me = self.st.id;
        match self.st.store.route(me, object, claim, object.home) {
            Route::Here => {
                let Some(stored) = self.st.store.objects.get(&object) else {
                    return;
                };
                let size = u32::try_from(stored.bytes.len()).unwrap_or(u32::MAX);
                let found = if size <= limit {
                    Fetched::Copy(stored.bytes.clone())
                } else {
                    Fetched::TooBig { size }
                };
                let epoch = stored.epoch;
                self.reply(
                    requester,
                    Payload::Fetched {
                        object,
                        at: me,
                        epoch,
                        found,
                    },
                );
            }
            Route::Forward(at, epoch) => self.send(
                at,
                Payload::Fetch {
                    object,
                    requester,
                    limit,
                    epoch: Some(epoch),
                },
            ),
            Route::Guess(at) => self.send(
                at,
                Payload::Fetch {
                    object,
                    requester,
                    limit,
                    epoch: None,
                },
            ),
            Route::Park => self
                .st
                .arriving
                .entry(object)
                .or_default()
                .push(Parked::Fetch { requester, limit }),
            Route::Missing => {
                let found = Fetched::Missing;
                self.reply(
                    requester,
                    Payload::Fetched {
                        object,
                        at: me,
                        epoch: 0,
                        found,
                    },
                );
            }
        }
    }

    fn reply(&mut self, to: AgentId, payload: Payload) {
        if to == self.st.id {
            self.apply(payload);
        } else {
            self.send(to, payload);
        }
    }
}
