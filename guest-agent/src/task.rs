//! Tasks: explicit, serializable state machines.
//!
//! Rust's `async` state machines cannot be serialized, so a task here is a plain serde enum
//! (or struct) whose variants are its states. The runtime calls [`Task::step`] where the task
//! currently is; the step changes the state and says what happens next ([`Step`]). Between
//! steps the state is bytes: it can cross to another agent, wait in a queue, or be written to
//! disk.

use alloc::string::String;

use postcard_schema::Schema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::context::Ctx;
use crate::ids::{AgentId, FutureId};
use crate::reference::AnyRef;

/// A task type. Register it in a [`crate::Registry`] on every agent that may run it.
pub trait Task: Serialize + DeserializeOwned + Schema + 'static {
    /// The name agents agree on; part of the wire format.
    const NAME: &'static str;
    /// Bump when the meaning changes without the shape changing (the schema hash catches shape).
    const VERSION: u32;
    /// What the task finishes with; remembered at the origin under the task's future id.
    type Output: Serialize + DeserializeOwned + Schema;

    /// Runs one step here, on the agent `cx` belongs to.
    fn step(&mut self, cx: &mut Ctx<'_>) -> Step<Self::Output>;
}

/// What a step asks the runtime to do next.
#[derive(Debug, PartialEq)]
pub enum Step<O> {
    /// Run the next step here, now (the state changed; nothing to wait for).
    Continue,
    /// Wait for something (see [`Wait`]); the next step runs once it is here.
    Wait(Wait),
    /// Carry the task to this agent and run its next step there.
    MoveTo(AgentId),
    /// Finished: the value goes to the origin, exactly once.
    Done(O),
}

impl<O> Step<O> {
    /// Run the next step where `r`'s object lives, with read-write access to it.
    pub fn deref(r: impl Into<AnyRef>) -> Self {
        Step::Wait(Wait::Deref(r.into()))
    }

    /// Run the next step with read access to `r`: where it lives, or here with a fetched copy
    /// when the object is smaller than this task (the runtime decides by measured sizes).
    pub fn read(r: impl Into<AnyRef>) -> Self {
        Step::Wait(Wait::Read(r.into()))
    }
}

/// What a task waits for before its next step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Wait {
    /// The object, with write access: the task moves to it.
    Deref(AnyRef),
    /// The object, read-only: the task moves to it or fetches a copy.
    Read(AnyRef),
    /// A child's result: the task goes to the future's origin and waits there.
    Result(FutureId),
    /// The task cannot go on; it finishes with this failure instead of a value.
    Fail(String),
}

impl<O> Step<O> {
    /// Finish with a failure instead of a value.
    pub fn fail(why: impl core::fmt::Display) -> Self {
        Step::Wait(Wait::Fail(alloc::format!("{why}")))
    }
}

/// The answer to a [`Ctx`] access: the value, or what to wait for to get it.
#[derive(Debug)]
pub enum Access<T> {
    Ready(T),
    Wait(Wait),
}

/// Gets the value of an [`Access`] or returns the step that waits for it.
///
/// ```ignore
/// let profile = need!(cx.read(&self.user));
/// ```
#[macro_export]
macro_rules! need {
    ($access:expr) => {
        match $access {
            $crate::Access::Ready(value) => value,
            $crate::Access::Wait(wait) => return $crate::Step::Wait(wait),
        }
    };
}
