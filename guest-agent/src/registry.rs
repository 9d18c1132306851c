//! The registry of task types: what lets agents run each other's continuations.
//!
//! A task on the wire names its type (name, version, schema hash). An agent runs it only if its
//! own registry has the same name with the same version and the same schema hash, so agents
//! need the same task registry, not the same binary. The schema hash covers the task's whole
//! shape as postcard encodes it (field names and types, nested types, enum variants), so an
//! agent built from an older definition refuses the task instead of misreading its bytes.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::marker::PhantomData;

use postcard_schema::schema::NamedType;
use serde::{Deserialize, Serialize};

use crate::context::Ctx;
use crate::ids::AgentId;
use crate::task::{Step, Task, Wait};

/// A task type as the wire names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskType {
    pub name: String,
    pub version: u32,
    pub schema: u64,
}

/// A task between steps: its type and its postcard-encoded state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    pub kind: TaskType,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    #[error("task type `{name}` is not in this agent's registry")]
    Unknown { name: String },
    #[error("task type `{name}` is version {theirs} on the sender but version {ours} here")]
    Version {
        name: String,
        ours: u32,
        theirs: u32,
    },
    #[error("task type `{name}` has schema {theirs:016x} on the sender but {ours:016x} here")]
    Schema {
        name: String,
        ours: u64,
        theirs: u64,
    },
    #[error("task type `{name}` was registered twice")]
    Duplicate { name: String },
    #[error("the state of a `{name}` task does not decode: {error}")]
    Decode {
        name: String,
        error: postcard::Error,
    },
    #[error("a `{name}` task's state or output does not encode: {error}")]
    Encode {
        name: String,
        error: postcard::Error,
    },
}

/// FNV-1a over the postcard encoding of a type's schema.
pub fn schema_hash(schema: &NamedType) -> u64 {
    // The schema types encode infallibly (static strings and enums); an empty encoding would
    // only make every type compare equal to nothing else's empty encoding.
    let bytes = postcard::to_allocvec(schema).unwrap_or_default();
    fnv1a(&bytes)
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The type of `T` as the wire names it.
pub fn task_type<T: Task>() -> TaskType {
    TaskType {
        name: T::NAME.to_string(),
        version: T::VERSION,
        schema: schema_hash(T::SCHEMA),
    }
}

/// What one step did, with the output already encoded.
pub(crate) enum ErasedStep {
    Continue,
    Wait(Wait),
    MoveTo(AgentId),
    Done(Vec<u8>),
}

/// A task type with its type erased, so one registry holds many.
trait ErasedTask: Send + Sync {
    fn kind(&self) -> &TaskType;
    fn step(&self, body: &mut Vec<u8>, cx: &mut Ctx<'_>) -> Result<ErasedStep, RegistryError>;
}

struct Entry<T> {
    kind: TaskType,
    _type: PhantomData<fn() -> T>,
}

impl<T: Task> ErasedTask for Entry<T> {
    fn kind(&self) -> &TaskType {
        &self.kind
    }

    fn step(&self, body: &mut Vec<u8>, cx: &mut Ctx<'_>) -> Result<ErasedStep, RegistryError> {
        let name = || self.kind.name.clone();
        let mut task: T = postcard::from_bytes(body).map_err(|error| RegistryError::Decode {
            name: name(),
            error,
        })?;
        let step = task.step(cx);
        let encode = |error| RegistryError::Encode {
            name: name(),
            error,
        };
        *body = postcard::to_allocvec(&task).map_err(encode)?;
        Ok(match step {
            Step::Continue => ErasedStep::Continue,
            Step::Wait(wait) => ErasedStep::Wait(wait),
            Step::MoveTo(agent) => ErasedStep::MoveTo(agent),
            Step::Done(value) => ErasedStep::Done(postcard::to_allocvec(&value).map_err(encode)?),
        })
    }
}

/// The task types an agent can run.
#[derive(Default)]
pub struct Registry {
    entries: BTreeMap<String, Box<dyn ErasedTask>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `T`; a name registered twice is refused.
    pub fn register<T: Task>(&mut self) -> Result<(), RegistryError> {
        let kind = task_type::<T>();
        if self.entries.contains_key(&kind.name) {
            return Err(RegistryError::Duplicate { name: kind.name });
        }
        let entry = Entry::<T> {
            kind: kind.clone(),
            _type: PhantomData,
        };
        self.entries.insert(kind.name, Box::new(entry));
        Ok(())
    }

    /// Encodes a task of a registered type into its wire state.
    pub fn encode<T: Task>(&self, task: &T) -> Result<TaskState, RegistryError> {
        let kind = task_type::<T>();
        self.check(&kind)?;
        let body = postcard::to_allocvec(task).map_err(|error| RegistryError::Encode {
            name: kind.name.clone(),
            error,
        })?;
        Ok(TaskState { kind, body })
    }

    /// Refuses a type this agent does not know exactly as the sender does.
    pub fn check(&self, kind: &TaskType) -> Result<(), RegistryError> {
        self.entry(kind).map(|_| ())
    }

    fn entry(&self, kind: &TaskType) -> Result<&dyn ErasedTask, RegistryError> {
        let entry = self
            .entries
            .get(&kind.name)
            .ok_or_else(|| RegistryError::Unknown {
                name: kind.name.clone(),
            })?;
        let ours = entry.kind();
        if ours.version != kind.version {
            return Err(RegistryError::Version {
                name: kind.name.clone(),
                ours: ours.version,
                theirs: kind.version,
            });
        }
        if ours.schema != kind.schema {
            return Err(RegistryError::Schema {
                name: kind.name.clone(),
                ours: ours.schema,
                theirs: kind.schema,
            });
        }
        Ok(entry.as_ref())
    }

    /// Runs one step of `state` in place.
    pub(crate) fn step(
        &self,
        state: &mut TaskState,
        cx: &mut Ctx<'_>,
    ) -> Result<ErasedStep, RegistryError> {
        self.entry(&state.kind)?.step(&mut state.body, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::FutureId;
    use crate::task::Step;
    use postcard_schema::Schema;

    mod v1 {
        use super::*;
        #[derive(Serialize, Deserialize, Schema)]
        pub struct Count {
            pub n: u32,
        }
        impl Task for Count {
            const NAME: &'static str = "count";
            const VERSION: u32 = 1;
            type Output = u32;
            fn step(&mut self, _: &mut Ctx<'_>) -> Step<u32> {
                Step::Done(self.n)
            }
        }
    }

    mod v2 {
        use super::*;
        /// The same name and version with another shape: a field became a `u64`.
        #[derive(Serialize, Deserialize, Schema)]
        pub struct Count {
            pub n: u64,
        }
        impl Task for Count {
            const NAME: &'static str = "count";
            const VERSION: u32 = 1;
            type Output = u32;
            fn step(&mut self, _: &mut Ctx<'_>) -> Step<u32> {
                Step::Done(0)
            }
        }
    }

    #[test]
    fn a_changed_shape_is_refused_by_schema_hash() {
        let mut ours = Registry::new();
        ours.register::<v1::Count>().unwrap();
        let theirs = task_type::<v2::Count>();
        assert!(matches!(
            ours.check(&theirs),
            Err(RegistryError::Schema { .. })
        ));
        let message = ours.check(&theirs).unwrap_err().to_string();
        assert!(
            message.starts_with("task type `count` has schema"),
            "{message}"
        );
    }

    #[test]
    fn unknown_types_versions_and_duplicates_are_refused() {
        let mut ours = Registry::new();
        ours.register::<v1::Count>().unwrap();
        assert_eq!(
            ours.register::<v1::Count>(),
            Err(RegistryError::Duplicate {
                name: "count".into()
            })
        );
        let mut kind = task_type::<v1::Count>();
        kind.version = 2;
        assert_eq!(
            ours.check(&kind),
            Err(RegistryError::Version {
                name: "count".into(),
                ours: 1,
                theirs: 2
            })
        );
        kind.name = "other".into();
        assert_eq!(
            ours.check(&kind),
            Err(RegistryError::Unknown {
                name: "other".into()
            })
        );
        assert_eq!(ours.check(&task_type::<v1::Count>()), Ok(()));
        // A future id is not a task: the schema tells them apart even at equal sizes.
        assert_ne!(
            schema_hash(FutureId::SCHEMA),
            task_type::<v1::Count>().schema
        );
    }
}
