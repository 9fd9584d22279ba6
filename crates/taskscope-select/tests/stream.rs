//! `until_cancelled`: its fairness rule, fusing, the cause read afterwards, and that no item is
//! lost.

use futures::StreamExt as _;
use futures::stream::{self, FusedStream};
use taskscope::{Cause, Scope};
use taskscope_select::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_test::{assert_pending, assert_ready, task};

#[tokio::test(start_paused = true)]
async fn yields_every_item_then_ends_without_a_cause() {
    let scope = Scope::new();
    let mut items = stream::iter(1..=3).until_cancelled(&scope);
    let mut seen = Vec::new();
    while let Some(item) = items.next().await {
        seen.push(item);
    }
    assert_eq!(seen, [1, 2, 3]);
    assert!(items.cause().is_none(), "it ran out, nobody cancelled it");
    assert!(items.is_terminated());
    scope.cancel(Cause::new("LATE"));
    assert_eq!(items.next().await, None);
    assert!(
        items.cause().is_none(),
        "a cancel after the end changes nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pending_stream_ends_at_the_cancel_with_the_cause() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let scope = Scope::new();
    let mut items = UnboundedReceiverStream::new(rx).until_cancelled(&scope);
    {
        let mut next = task::spawn(items.next());
        assert_pending!(next.poll());
        scope.cancel(Cause::new("REBALANCE"));
        assert!(next.is_woken());
        assert_eq!(assert_ready!(next.poll()), None);
    }
    assert_eq!(items.cause().unwrap().code(), "REBALANCE");
    assert!(items.is_terminated());
    tx.send(1).unwrap();
    assert_eq!(items.next().await, None, "fused: ended streams stay ended");
}

#[tokio::test(start_paused = true)]
async fn fairness_a_busy_stream_stops_at_the_cancel_and_keeps_the_rest() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..100 {
        tx.send(i).unwrap();
    }
    let scope = Scope::new();
    let mut items = UnboundedReceiverStream::new(rx).until_cancelled(&scope);
    let mut seen = Vec::new();
    while let Some(item) = items.next().await {
        seen.push(item);
        if item == 4 {
            scope.cancel(Cause::new("STOP"));
        }
    }
    assert_eq!(seen, [0, 1, 2, 3, 4], "no item after the cancel");
    let rest: Vec<_> = items.into_inner().take(95).collect().await;
    assert_eq!(rest, (5..100).collect::<Vec<_>>(), "no item lost");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_scope_ends_it_before_the_first_item() {
    let scope = Scope::new();
    scope.cancel(Cause::new("EARLY"));
    let mut items = stream::iter([1]).until_cancelled(&scope);
    assert_eq!(items.next().await, None);
    assert_eq!(items.cause().unwrap().code(), "EARLY");
    assert_eq!(
        futures::Stream::size_hint(items.get_ref()),
        (1, Some(1)),
        "the item is still there"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_next_loses_nothing() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let scope = Scope::new();
    let mut items = UnboundedReceiverStream::new(rx).until_cancelled(&scope);
    {
        let mut next = task::spawn(items.next());
        assert_pending!(next.poll());
    }
    tx.send("kept").unwrap();
    assert_eq!(items.next().await, Some("kept"));
}

#[tokio::test(start_paused = true)]
async fn the_owned_twin_runs_in_a_spawned_task() {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let scope = Scope::new();
    let consumer = tokio::spawn({
        let mut items = UnboundedReceiverStream::new(rx).until_cancelled_owned(scope.child());
        async move {
            while let Some(item) = items.next().await {
                seen_tx.send(item).unwrap();
            }
            items.cause().cloned()
        }
    });
    tx.send(1).unwrap();
    tx.send(2).unwrap();
    assert_eq!(seen_rx.recv().await, Some(1));
    assert_eq!(seen_rx.recv().await, Some(2));
    scope.cancel(Cause::new("SHUTDOWN"));
    assert_eq!(consumer.await.unwrap().unwrap().code(), "SHUTDOWN");
    assert_eq!(seen_rx.recv().await, None, "nothing after the cancel");
}

#[tokio::test(start_paused = true)]
async fn size_hint_keeps_the_upper_bound_and_is_zero_once_ended() {
    let scope = Scope::new();
    let mut items = stream::iter([1, 2, 3]).until_cancelled(&scope);
    assert_eq!(futures::Stream::size_hint(&items), (0, Some(3)));
    assert_eq!(items.next().await, Some(1));
    scope.cancel(Cause::plain());
    assert_eq!(items.next().await, None);
    assert_eq!(futures::Stream::size_hint(&items), (0, Some(0)));
}
