//! Random trees with random cancels and deadlines, checked against a small reference model of
//! the cause table: a scope's cause is the earliest event, in time order, among its own cancel,
//! its own deadline, and (unless detached) whatever reached its parent. The cause's origin is the
//! path of the scope the event belongs to: its named ancestors' names and its own, if any.

use std::time::Duration;

use proptest::prelude::*;
use taskscope::{Cause, CauseKind, Scope};
use tokio::time::Instant;

#[derive(Clone, Debug)]
enum Op {
    /// A child of node `parent % len`.
    Child {
        parent: usize,
        kind: ChildKind,
        named: bool,
    },
    Cancel {
        node: usize,
    },
    Advance {
        ms: u64,
    },
    /// Looking must not change what anyone reports.
    Observe {
        node: usize,
    },
    /// Drop the handle; descendants keep the node alive.
    DropHandle {
        node: usize,
    },
}

#[derive(Clone, Debug)]
enum ChildKind {
    Plain,
    Timeout { ms: u64, custom_cause: bool },
    Detached,
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        2 => Just(ChildKind::Plain),
        2 => (0..40u64, any::<bool>()).prop_map(|(ms, custom_cause)| ChildKind::Timeout { ms, custom_cause }),
        1 => Just(ChildKind::Detached),
    ];
    prop_oneof![
        4 => (any::<usize>(), kind, any::<bool>())
            .prop_map(|(parent, kind, named)| Op::Child { parent, kind, named }),
        2 => any::<usize>().prop_map(|node| Op::Cancel { node }),
        2 => (0..25u64).prop_map(|ms| Op::Advance { ms }),
        1 => any::<usize>().prop_map(|node| Op::Observe { node }),
        1 => any::<usize>().prop_map(|node| Op::DropHandle { node }),
    ]
}

/// An event that can cancel a scope, ordered by (time, sequence).
#[derive(Clone, Debug, PartialEq)]
struct Event {
    at_ms: u64,
    seq: usize,
    /// What the scope must then report: (kind, code, detail).
    expect: (CauseKind, String, Option<String>),
    /// The node the event belongs to, whose path is the cause's origin.
    node: usize,
}

struct ModelNode {
    name: Option<String>,
    parent: Option<usize>,
    detached: bool,
    deadline: Option<Event>,
    cancel: Option<Event>,
}

struct Model {
    nodes: Vec<ModelNode>,
}

impl Model {
    /// The earliest event that has happened by `now_ms` for `node`.
    fn cause(&self, node: usize, now_ms: u64) -> Option<Event> {
        let mut best: Option<Event> = None;
        let mut at = Some(node);
        while let Some(index) = at {
            let n = &self.nodes[index];
            for event in [&n.cancel, &n.deadline].into_iter().flatten() {
                let earlier = best
                    .as_ref()
                    .is_none_or(|b| (event.at_ms, event.seq) < (b.at_ms, b.seq));
                if event.at_ms <= now_ms && earlier {
                    best = Some(event.clone());
                }
            }
            at = if n.detached { None } else { n.parent };
        }
        best
    }

    /// The path of `node`: the names of it and its ancestors (detached or not), outermost first.
    fn path(&self, node: usize) -> Option<String> {
        let mut names = Vec::new();
        let mut at = Some(node);
        while let Some(index) = at {
            names.extend(self.nodes[index].name.as_deref());
            at = self.nodes[index].parent;
        }
        names.reverse();
        (!names.is_empty()).then(|| names.join("/"))
    }
}

fn check(
    model: &Model,
    scope: &Scope,
    expected: Option<&Event>,
    context: &str,
) -> Result<(), TestCaseError> {
    let actual = scope.cause();
    match (expected, actual) {
        (None, None) => {}
        (Some(event), Some(cause)) => {
            let (kind, code, detail) = &event.expect;
            prop_assert_eq!(cause.kind(), *kind, "{}", context);
            prop_assert_eq!(cause.code(), code.as_str(), "{}", context);
            prop_assert_eq!(cause.detail(), detail.as_deref(), "{}", context);
            let origin = model.path(event.node);
            prop_assert_eq!(cause.origin(), origin.as_deref(), "{}: origin", context);
        }
        (expected, actual) => prop_assert!(
            false,
            "{}: expected {:?}, got {:?}",
            context,
            expected,
            actual
        ),
    }
    prop_assert_eq!(scope.is_cancelled(), expected.is_some(), "{}", context);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let start = Instant::now();
        let now_ms = || (Instant::now() - start).as_millis() as u64;
        let mut handles: Vec<Option<Scope>> = vec![Some(Scope::builder().name("n0").build())];
        let mut model = Model {
            nodes: vec![ModelNode {
                name: Some("n0".to_owned()),
                parent: None,
                detached: false,
                deadline: None,
                cancel: None,
            }],
        };
        for (seq, op) in ops.into_iter().enumerate() {
            let context = format!("op {seq}: {op:?}");
            match op {
                Op::Child {
                    parent,
                    kind,
                    named,
                } => {
                    let parent = parent % handles.len();
                    let Some(parent_scope) = &handles[parent] else {
                        continue;
                    };
                    let index = handles.len();
                    let name = format!("n{index}");
                    let builder = parent_scope.child_builder();
                    let builder = if named {
                        builder.name(name.clone())
                    } else {
                        builder
                    };
                    let (scope, detached, deadline) = match kind {
                        ChildKind::Plain => (builder.build(), false, None),
                        ChildKind::Detached => (builder.detached().build(), true, None),
                        ChildKind::Timeout { ms, custom_cause } => {
                            let detail = format!("deadline of {name}");
                            let (builder, code, detail) = if custom_cause {
                                let cause = Cause::new("CUSTOM").with_detail(detail.clone());
                                (builder.deadline_cause(cause), "CUSTOM", Some(detail))
                            } else {
                                (builder, "deadline", None)
                            };
                            let event = Event {
                                at_ms: now_ms() + ms,
                                seq,
                                expect: (CauseKind::DeadlineExceeded, code.to_owned(), detail),
                                node: index,
                            };
                            (
                                builder.timeout(Duration::from_millis(ms)).build(),
                                false,
                                Some(event),
                            )
                        }
                    };
                    handles.push(Some(scope));
                    model.nodes.push(ModelNode {
                        name: named.then_some(name),
                        parent: Some(parent),
                        detached,
                        deadline,
                        cancel: None,
                    });
                }
                Op::Cancel { node } => {
                    let node = node % handles.len();
                    let Some(scope) = &handles[node] else {
                        continue;
                    };
                    let detail = format!("op {seq}");
                    let before = model.cause(node, now_ms());
                    let won = scope.cancel(Cause::new("X").with_detail(detail.clone()));
                    prop_assert_eq!(won, before.is_none(), "{}", context);
                    if before.is_none() {
                        model.nodes[node].cancel = Some(Event {
                            at_ms: now_ms(),
                            seq,
                            expect: (CauseKind::Explicit, "X".to_owned(), Some(detail)),
                            node,
                        });
                    }
                }
                Op::Advance { ms } => tokio::time::advance(Duration::from_millis(ms)).await,
                Op::Observe { node } => {
                    let node = node % handles.len();
                    if let Some(scope) = &handles[node] {
                        check(
                            &model,
                            scope,
                            model.cause(node, now_ms()).as_ref(),
                            &context,
                        )?;
                    }
                }
                Op::DropHandle { node } => {
                    let node = node % handles.len();
                    if node != 0 {
                        handles[node] = None;
                    }
                }
            }
        }
        let now = now_ms();
        for (index, scope) in handles.iter().enumerate() {
            let Some(scope) = scope else { continue };
            let context = format!("final check of n{index}");
            check(&model, scope, model.cause(index, now).as_ref(), &context)?;
            prop_assert_eq!(
                scope.path().to_string(),
                model.path(index).unwrap_or_default(),
                "{}: path",
                context
            );
            let n = &model.nodes[index];
            if let (true, Some(parent)) = (n.detached, n.parent) {
                let parent_cause = scope.parent_cause().map(|c| c.detail().map(str::to_owned));
                let expected = model.cause(parent, now).map(|e| e.expect.2);
                prop_assert_eq!(parent_cause, expected, "{}: parent_cause", context);
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_follow_the_cause_table(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
