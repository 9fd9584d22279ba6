//! Tree shape: names and paths, memory held for children, deep trees.

use taskscope::{Cause, Scope};

#[test]
fn paths_join_names_and_skip_unnamed_scopes() {
    let orders = Scope::builder().name("orders").build();
    let unnamed = orders.child();
    let reserve = unnamed.child_builder().name("reserve").build();
    assert_eq!(orders.path(), "orders");
    assert_eq!(unnamed.path(), "orders");
    assert_eq!(reserve.path(), "orders/reserve");
    assert_eq!(Scope::new().path(), "");
    assert_eq!(Scope::new().child_builder().name("x").build().path(), "x");
}

#[test]
fn paths_compare_and_display_as_the_joined_names() {
    let orders = Scope::builder().name("orders").build();
    let reserve = orders.child().child_builder().name("reserve").build();
    for wrong in [
        "reserve",
        "orders",
        "xorders/reserve",
        "orders/reserve/",
        "/orders/reserve",
        "",
    ] {
        assert_ne!(reserve.path(), wrong);
    }
    assert_eq!(reserve.path().to_string(), "orders/reserve");
    assert_eq!(format!("{:?}", reserve.path()), "\"orders/reserve\"");
    assert!(!reserve.path().is_empty());
    assert!(Scope::new().child().path().is_empty());
    assert_eq!(reserve.path(), reserve.clone().path());
    assert_ne!(reserve.path(), orders.path());
    let blank = Scope::builder().name("").build();
    assert!(blank.path().is_empty(), "an empty name adds no segment");
    assert_eq!(blank.child_builder().name("x").build().path(), "x");
}

#[test]
fn a_million_short_lived_children_leave_nothing_behind() {
    let parent = Scope::new();
    let keep = parent.child();
    for _ in 0..1_000_000 {
        let child = parent.child();
        drop(child);
    }
    assert_eq!(parent.live_children(), 1);
    drop(keep);
    assert_eq!(parent.live_children(), 0);
}

#[test]
fn dropping_many_live_children_empties_the_parent() {
    let parent = Scope::new();
    let children: Vec<_> = (0..10_000).map(|_| parent.child()).collect();
    assert_eq!(parent.live_children(), 10_000);
    drop(children);
    assert_eq!(parent.live_children(), 0);
}

#[test]
fn children_of_a_crowd_that_left_stay_reachable_and_unlinkable() {
    // One long-lived child among many dropped ones: the parent compacts its table and the
    // survivors (moved to new keys) are still cancelled with it and still unlink correctly.
    let parent = Scope::new();
    let early = parent.child();
    let crowd: Vec<_> = (0..10_000).map(|_| parent.child()).collect();
    let late = parent.child();
    let survivors: Vec<_> = crowd.iter().step_by(1000).cloned().collect();
    drop(crowd);
    assert_eq!(parent.live_children(), 2 + survivors.len());
    drop(early);
    assert_eq!(parent.live_children(), 1 + survivors.len());
    parent.cancel(Cause::new("X"));
    assert!(survivors.iter().all(|s| s.cause().unwrap().code() == "X"));
    assert_eq!(late.cause().unwrap().code(), "X");
}

#[test]
fn survivors_of_a_compaction_unlink_themselves() {
    let parent = Scope::new();
    let crowd: Vec<_> = (0..10_000).map(|_| parent.child()).collect();
    let late = parent.child();
    drop(crowd);
    assert_eq!(parent.live_children(), 1);
    let another = parent.child();
    drop(late);
    assert_eq!(parent.live_children(), 1);
    drop(another);
    assert_eq!(parent.live_children(), 0);
}

#[test]
fn a_cancelled_scope_holds_no_children() {
    let parent = Scope::new();
    let children: Vec<_> = (0..100).map(|_| parent.child()).collect();
    parent.cancel(Cause::plain());
    assert_eq!(parent.live_children(), 0);
    assert!(children.iter().all(Scope::is_cancelled));
}

#[test]
fn an_inner_node_lives_while_a_descendant_needs_it() {
    let root = Scope::new();
    let leaf = root.child().child().child();
    assert_eq!(
        root.live_children(),
        1,
        "the dropped middle handles are still linked"
    );
    root.cancel(Cause::new("X"));
    assert_eq!(leaf.cause().unwrap().code(), "X");
    drop(leaf);
    assert_eq!(root.live_children(), 0);
}

#[test]
fn a_weak_scope_does_not_keep_its_scope() {
    let parent = Scope::new();
    let child = parent.child();
    let weak = child.downgrade();
    assert_eq!(weak.upgrade().unwrap().path(), child.path());
    drop(child);
    assert!(weak.upgrade().is_none());
    assert_eq!(parent.live_children(), 0);
}

const DEPTH: usize = 100_000;

/// Runs `f` on a thread with a 64 KiB stack.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_deep_chain_cancels_and_drops_on_a_small_stack() {
    on_small_stack(|| {
        let root = Scope::new();
        let mut leaf = root.clone();
        for _ in 0..DEPTH {
            leaf = leaf.child();
        }
        assert!(root.cancel(Cause::new("DEEP")));
        assert_eq!(leaf.cause().unwrap().code(), "DEEP");
        drop(leaf);
        assert_eq!(root.live_children(), 0);
    });
}

#[test]
fn a_deep_chain_drops_uncancelled_on_a_small_stack() {
    on_small_stack(|| {
        let root = Scope::new();
        let mut leaf = root.clone();
        for _ in 0..DEPTH {
            leaf = leaf.child();
        }
        assert_eq!(root.live_children(), 1);
        drop(leaf);
        assert_eq!(root.live_children(), 0);
    });
}

#[test]
fn a_deep_named_chain_drops_on_a_small_stack() {
    on_small_stack(|| {
        let root = Scope::builder().name("root").build();
        let mut leaf = root.clone();
        for _ in 0..DEPTH {
            leaf = leaf.child_builder().name("n").build();
        }
        drop(leaf);
        assert_eq!(root.live_children(), 0);
    });
}

/// A cause holds its origin's path: the last one released frees the whole chain of names.
#[test]
fn a_cause_from_a_deep_named_leaf_drops_on_a_small_stack() {
    on_small_stack(|| {
        let root = Scope::builder().name("root").build();
        let mut leaf = root.clone();
        for _ in 0..DEPTH {
            leaf = leaf.child_builder().name("n").build();
        }
        leaf.cancel(Cause::new("LEAF"));
        let cause = leaf.cause().unwrap();
        drop((leaf, root));
        assert!(cause.origin().unwrap().starts_with("root/n/n/"));
        drop(cause);
    });
}

#[test]
fn a_deep_chain_cancelled_from_the_leaf_up_stays_consistent() {
    on_small_stack(|| {
        let root = Scope::new();
        let mut chain = vec![root.clone()];
        for _ in 0..DEPTH {
            let next = chain.last().unwrap().child();
            chain.push(next);
        }
        assert!(chain[DEPTH].cancel(Cause::new("LEAF")));
        assert!(chain[DEPTH / 2].cancel(Cause::new("MIDDLE")));
        assert!(root.cancel(Cause::new("ROOT")));
        assert_eq!(chain[DEPTH].cause().unwrap().code(), "LEAF");
        assert_eq!(chain[DEPTH - 1].cause().unwrap().code(), "MIDDLE");
        assert_eq!(chain[1].cause().unwrap().code(), "ROOT");
        drop(chain);
    });
}
