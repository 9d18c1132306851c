//! Running tasks: routing each by what it waits for, stepping it, shipping it, finishing it.

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::{Agent, Event, Parked, Policy, MAX_HOPS, TOUCH_MEMORY};
use crate::context::Ctx;
use crate::ids::{AgentId, FutureId, ObjectId};
use crate::registry::ErasedStep;
use crate::store::Route;
use crate::task::Wait;
use crate::wire::{encoded_len, Message, Payload, TaskRecord, TaskResult};

impl Agent {
    /// Runs up to `max_steps` task steps; returns how many ran.
    pub fn run(&mut self, max_steps: usize) -> usize {
        let mut steps = 0;
        while steps < max_steps {
            let Some(record) = self.st.runnable.pop_front() else {
                break;
            };
            if self.advance(record) {
                steps += 1;
            }
        }
        steps
    }

    /// Routes a task by what it waits for; runs a step if it can. Returns whether it stepped.
    fn advance(&mut self, mut record: TaskRecord) -> bool {
        let me = self.st.id;
        let Some(wait) = record.wait.clone() else {
            return self.step(record);
        };
        match wait {
            Wait::Fail(why) => self.finish(record, Err(why)),
            Wait::Result(fut) if fut.origin != me => self.ship(record, fut.origin),
            Wait::Result(fut) => {
                if self.st.results.contains_key(&fut) {
                    return self.step(record);
                }
                self.st.awaiting.entry(fut).or_default().push(record);
            }
            Wait::Deref(r) | Wait::Read(r) => {
                let read = matches!(wait, Wait::Read(_));
                if read && record.copies.iter().any(|(id, _)| *id == r.id) {
                    return self.step(record);
                }
                match self.st.store.route(me, r.id, record.via_pointer, r.hint) {
                    Route::Here => {
                        if record.via_pointer.take().is_some() {
                            self.hint_origin(&record, r.id);
                        }
                        return self.step(record);
                    }
                    Route::Park => self
                        .st
                        .arriving
                        .entry(r.id)
                        .or_default()
                        .push(Parked::Task(record)),
                    Route::Missing => {
                        self.finish(record, Err(alloc::format!("{} does not exist", r.id)))
                    }
                    Route::Forward(at, epoch) => {
                        if read && self.should_fetch(&record, r.id) {
                            self.fetch(record, r.id, Some(epoch), at);
                        } else {
                            record.via_pointer = Some(epoch);
                            self.ship(record, at);
                        }
                    }
                    Route::Guess(at) => {
                        if read && self.should_fetch(&record, r.id) {
                            self.fetch(record, r.id, None, at);
                        } else {
                            record.via_pointer = None;
                            self.ship(record, at);
                        }
                    }
                }
            }
        }
        false
    }

    fn should_fetch(&self, record: &TaskRecord, id: ObjectId) -> bool {
        match self.st.config.policy {
            Policy::Move => false,
            Policy::Fetch => true,
            // Unknown size: ask with the task's size as the limit; the holder answers with a
            // copy or with the size, and we learn it either way.
            Policy::ShipOrFetch => self
                .st
                .store
                .size(id)
                .is_none_or(|size| (size as usize) < encoded_len(record)),
        }
    }

    fn fetch(&mut self, record: TaskRecord, object: ObjectId, epoch: Option<u32>, at: AgentId) {
        let limit = match self.st.config.policy {
            Policy::Fetch => u32::MAX,
            _ => u32::try_from(encoded_len(&record)).unwrap_or(u32::MAX),
        };
        if !self.st.outgoing.contains_key(&at) {
            let why = alloc::format!("{at} is not a peer of {}", self.st.id);
            return self.finish(record, Err(why));
        }
        let waiting = self.st.fetching.entry(object).or_default();
        waiting.push(record);
        if waiting.len() == 1 {
            let me = self.st.id;
            self.st.stats.fetches += 1;
            self.send(
                at,
                Payload::Fetch {
                    object,
                    requester: me,
                    limit,
                    epoch,
                },
            );
        }
    }

    /// Tells the task's origin where the object it chased really is, so its next request goes
    /// straight there.
    fn hint_origin(&mut self, record: &TaskRecord, object: ObjectId) {
        let me = self.st.id;
        let origin = record.fut.origin;
        if origin == me {
            return;
        }
        if let Some(stored) = self.st.store.objects.get(&object) {
            let size = u32::try_from(stored.bytes.len()).unwrap_or(u32::MAX);
            let hint = Message::Hint {
                object,
                at: me,
                epoch: stored.epoch,
                size,
            };
            self.control.push((origin, hint));
        }
    }

    /// Runs one step of a task that has what it waited for. Returns true.
    fn step(&mut self, mut record: TaskRecord) -> bool {
        let me = self.st.id;
        let registry = Arc::clone(&self.registry);
        let st = &mut self.st;
        let mut cx = Ctx {
            me,
            store: &mut st.store,
            results: &mut st.results,
            counters: &mut st.counters,
            registry: &registry,
            copies: &record.copies,
            parent_touched: &record.touched,
            touched: Vec::new(),
            spawned: Vec::new(),
        };
        let outcome = registry.step(&mut record.state, &mut cx);
        let Ctx {
            touched, spawned, ..
        } = cx;
        st.stats.steps += 1;
        for &new in &touched {
            for &old in &record.touched {
                st.sketch.observe(old, new);
            }
            record.touched.retain(|id| *id != new);
            record.touched.push(new);
        }
        let excess = record.touched.len().saturating_sub(TOUCH_MEMORY);
        record.touched.drain(..excess);
        st.runnable.extend(spawned);
        record.via_pointer = None;
        match outcome {
            Err(error) => self.finish(record, Err(error.to_string())),
            Ok(ErasedStep::Continue) => {
                record.wait = None;
                record.copies.clear();
                self.st.runnable.push_back(record);
            }
            Ok(ErasedStep::Wait(wait)) => {
                record.wait = Some(wait);
                self.st.runnable.push_back(record);
            }
            Ok(ErasedStep::MoveTo(agent)) => {
                record.wait = None;
                record.copies.clear();
                if agent == me {
                    self.st.runnable.push_back(record);
                } else {
                    self.ship(record, agent);
                }
            }
            Ok(ErasedStep::Done(value)) => self.finish(record, Ok(value)),
        }
        true
    }

    /// Carries a task to another agent.
    pub(super) fn ship(&mut self, mut record: TaskRecord, to: AgentId) {
        if !self.st.outgoing.contains_key(&to) {
            let why = alloc::format!("{to} is not a peer of {}", self.st.id);
            return self.finish(record, Err(why));
        }
        record.hops += 1;
        if record.hops > MAX_HOPS {
            return self.finish(record, Err(String::from("the task hopped too often")));
        }
        record.copies.clear();
        self.send(to, Payload::Task(record));
    }

    /// A task is done: its result goes to its origin (`remember`).
    pub(super) fn finish(&mut self, record: TaskRecord, result: TaskResult) {
        self.st.stats.completed += 1;
        self.st.stats.task_hops_at_completion += u64::from(record.hops);
        self.events.push(Event::Completed(record.fut));
        let fut = record.fut;
        if fut.origin == self.st.id {
            self.remember(fut, result);
        } else {
            self.send(fut.origin, Payload::Result { fut, result });
        }
    }

    pub(super) fn remember(&mut self, fut: FutureId, result: TaskResult) {
        self.st.stats.remembered += 1;
        self.events.push(Event::Remembered(fut));
        self.st.results.insert(fut, result);
        if let Some(waiters) = self.st.awaiting.remove(&fut) {
            self.st.runnable.extend(waiters);
        }
    }
}
