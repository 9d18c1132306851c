//! Agents need the same task registry, not the same binary: a task whose type the receiver
//! does not know is refused, and its origin learns why.

use std::sync::Arc;

use guest_agent::{
    need, Agent, AgentId, Config, Ctx, Ref, Registry, Schema, Step, Task, Transport,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Schema)]
struct Note {
    text: String,
}

#[derive(Serialize, Deserialize, Schema)]
struct ReadNote {
    note: Ref<Note>,
}

impl Task for ReadNote {
    const NAME: &'static str = "test.read-note";
    const VERSION: u32 = 1;
    type Output = String;

    fn step(&mut self, cx: &mut Ctx<'_>) -> Step<String> {
        Step::Done(need!(cx.read(&self.note)).text)
    }
}

#[derive(Default)]
struct Wire(Vec<(AgentId, Vec<u8>)>);

impl Transport for Wire {
    fn send(&mut self, to: AgentId, frame: &[u8]) {
        self.0.push((to, frame.to_vec()));
    }
}

fn exchange(agents: &mut [Agent]) {
    for now in 0..20 {
        let mut wire = Wire::default();
        for agent in agents.iter_mut() {
            agent.run(100);
            agent.flush(now, &mut wire);
        }
        for (to, frame) in wire.0 {
            agents[usize::from(to.0)].receive(&frame).unwrap();
        }
    }
}

#[test]
fn a_task_the_receiver_does_not_know_fails_at_its_origin_with_the_reason() {
    let ids = [AgentId(0), AgentId(1)];
    let mut knows = Registry::new();
    knows.register::<ReadNote>().unwrap();
    let knows = Arc::new(knows);
    let mut agents = vec![
        Agent::new(ids[0], &ids, knows.clone(), Config::default()),
        Agent::new(ids[1], &ids, Arc::new(Registry::new()), Config::default()),
    ];
    let id = agents[1]
        .insert_object(1, &Note { text: "hi".into() })
        .unwrap();
    let fut = agents[0]
        .submit(&ReadNote {
            note: Ref::new(id, id.home),
        })
        .unwrap();
    exchange(&mut agents);
    let result = agents[0]
        .result(fut)
        .cloned()
        .expect("the failure comes home");
    let why = result.unwrap_err();
    assert!(why.contains("agent 1 refused the task"), "{why}");
    assert!(
        why.contains("`test.read-note` is not in this agent's registry"),
        "{why}"
    );
}

#[test]
fn the_same_registry_runs_it_and_garbage_frames_are_errors() {
    let ids = [AgentId(0), AgentId(1)];
    let mut registry = Registry::new();
    registry.register::<ReadNote>().unwrap();
    let registry = Arc::new(registry);
    let mut agents: Vec<Agent> = ids
        .iter()
        .map(|&id| Agent::new(id, &ids, registry.clone(), Config::default()))
        .collect();
    let id = agents[1]
        .insert_object(1, &Note { text: "hi".into() })
        .unwrap();
    let fut = agents[0]
        .submit(&ReadNote {
            note: Ref::new(id, id.home),
        })
        .unwrap();
    exchange(&mut agents);
    let want: Result<Vec<u8>, String> = Ok(postcard::to_allocvec(&"hi".to_string()).unwrap());
    assert_eq!(agents[0].result(fut), Some(&want));
    for garbage in [
        &b""[..],
        b"GA",
        b"\x41\x47\x09\x00",
        b"\x41\x47\x01\x00\xff\xff\xff",
    ] {
        let error = agents[0].receive(garbage).unwrap_err().to_string();
        assert!(!error.is_empty());
    }
}
