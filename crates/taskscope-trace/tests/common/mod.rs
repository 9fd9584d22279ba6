//! A capturing `tracing` layer for the integration tests, installed per test with
//! [`Capture::set_default`] (a thread-local default, so tests run in parallel).
//!
//! It records every event (target, level, message, fields as strings, parent span) and every
//! span (name, target, fields at creation and fields recorded later, parent span, closed or
//! not). Spans are identified by a key of our own, since a `Registry` reuses span ids.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::{DefaultGuard, Interest};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry, SpanRef};

/// A span's key: unique for the life of a [`Capture`], unlike a span id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanKey(pub u64);

/// The span an event or a span was emitted in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    pub key: SpanKey,
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct CapturedEvent {
    pub target: String,
    pub level: Level,
    pub message: String,
    /// Every field but `message`, as strings (`Display` for strings and `%` values, `Debug`
    /// otherwise, which for numbers and bools is the same).
    pub fields: BTreeMap<String, String>,
    /// The explicit parent, else the span current where the event was emitted.
    pub parent: Option<Parent>,
}

impl CapturedEvent {
    /// The field `name`; panics naming the event if it is absent.
    #[track_caller]
    pub fn field(&self, name: &str) -> &str {
        match self.fields.get(name) {
            Some(value) => value,
            None => panic!("event has no field `{name}`: {self:#?}"),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.contains_key(name)
    }

    /// `field(name)` parsed as a number.
    #[track_caller]
    pub fn u64(&self, name: &str) -> u64 {
        let value = self.field(name);
        value
            .parse()
            .unwrap_or_else(|_| panic!("field `{name}` = {value:?} is not a u64: {self:#?}"))
    }

    pub fn parent_name(&self) -> Option<&str> {
        self.parent.as_ref().map(|parent| parent.name.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct CapturedSpan {
    pub key: SpanKey,
    pub name: String,
    pub target: String,
    pub level: Level,
    /// The fields given a value when the span was made (`Empty` ones are not there).
    pub fields: BTreeMap<String, String>,
    /// The fields recorded later (`Span::record`), last value wins.
    pub recorded: BTreeMap<String, String>,
    /// The explicit parent, else the span current where it was made.
    pub parent: Option<Parent>,
    pub closed: bool,
}

impl CapturedSpan {
    /// A field's current value: recorded later, or given at creation.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.recorded
            .get(name)
            .or_else(|| self.fields.get(name))
            .map(String::as_str)
    }

    /// A field given at creation; panics naming the span if it is absent.
    #[track_caller]
    pub fn field(&self, name: &str) -> &str {
        match self.fields.get(name) {
            Some(value) => value,
            None => panic!("span has no creation field `{name}`: {self:#?}"),
        }
    }

    /// A field recorded after creation; panics naming the span if it was not.
    #[track_caller]
    pub fn recorded(&self, name: &str) -> &str {
        match self.recorded.get(name) {
            Some(value) => value,
            None => panic!("span has no recorded field `{name}`: {self:#?}"),
        }
    }

    pub fn parent_key(&self) -> Option<SpanKey> {
        self.parent.as_ref().map(|parent| parent.key)
    }
}

#[derive(Default)]
struct State {
    events: Vec<CapturedEvent>,
    spans: Vec<CapturedSpan>,
    next_key: u64,
    /// Tasks waiting in [`Capture::wait_for`].
    waiters: Vec<Waker>,
}

/// A handle to what a [`CaptureLayer`] recorded; clones share it.
#[derive(Clone)]
pub struct Capture {
    state: Arc<Mutex<State>>,
    /// Which spans and events the layer enables; all when `None`.
    filter: Option<fn(&Metadata<'_>) -> bool>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture::new()
    }
}

impl Capture {
    /// A capture that enables everything.
    pub fn new() -> Capture {
        Capture {
            state: Arc::default(),
            filter: None,
        }
    }

    /// A capture whose layer disables every span and event (`enabled` is false), and records
    /// whatever reaches it anyway.
    pub fn disabled() -> Capture {
        Capture::filtered(|_| false)
    }

    /// A capture whose layer enables only the spans and events `filter` accepts.
    pub fn filtered(filter: fn(&Metadata<'_>) -> bool) -> Capture {
        Capture {
            filter: Some(filter),
            ..Capture::new()
        }
    }

    /// The layer that records into this capture.
    pub fn layer(&self) -> CaptureLayer {
        CaptureLayer(self.clone())
    }

    /// Installs a `Registry` with this capture's layer as the thread's default subscriber,
    /// until the guard is dropped.
    #[must_use = "the subscriber is uninstalled when the guard is dropped"]
    pub fn set_default(&self) -> DefaultGuard {
        tracing::subscriber::set_default(Registry::default().with(self.layer()))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn events(&self) -> Vec<CapturedEvent> {
        self.lock().events.clone()
    }

    /// Events on `target` whose message starts with `message`.
    pub fn events_of(&self, target: &str, message: &str) -> Vec<CapturedEvent> {
        self.lock()
            .events
            .iter()
            .filter(|event| event.target == target && event.message.starts_with(message))
            .cloned()
            .collect()
    }

    /// The one event on `target` whose message starts with `message` and whose `field` is
    /// `value`; panics if there is not exactly one.
    #[track_caller]
    pub fn the_event(
        &self,
        target: &str,
        message: &str,
        field: &str,
        value: &str,
    ) -> CapturedEvent {
        let found: Vec<_> = self
            .events_of(target, message)
            .into_iter()
            .filter(|event| event.fields.get(field).map(String::as_str) == Some(value))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one `{target}` `{message}` event with {field}={value:?}, got {found:#?}\n\
             all events: {:#?}",
            self.events()
        );
        found.into_iter().next().unwrap()
    }

    pub fn spans(&self) -> Vec<CapturedSpan> {
        self.lock().spans.clone()
    }

    /// Spans named `name`, in creation order.
    pub fn spans_named(&self, name: &str) -> Vec<CapturedSpan> {
        self.lock()
            .spans
            .iter()
            .filter(|span| span.name == name)
            .cloned()
            .collect()
    }

    #[track_caller]
    pub fn span(&self, key: SpanKey) -> CapturedSpan {
        self.lock()
            .spans
            .iter()
            .find(|span| span.key == key)
            .cloned()
            .unwrap_or_else(|| panic!("no span with key {key:?}"))
    }

    pub fn is_empty(&self) -> bool {
        let state = self.lock();
        state.events.is_empty() && state.spans.is_empty()
    }

    /// Waits until `ready` holds for the events captured so far. Never on real time: under
    /// paused tokio time, a condition that never holds fails after an hour of virtual time
    /// instead of hanging.
    pub async fn wait_for(&self, what: &str, ready: impl Fn(&[CapturedEvent]) -> bool) {
        let waiting = poll_fn(|cx| {
            let mut state = self.lock();
            if ready(&state.events) {
                return Poll::Ready(());
            }
            state.waiters.push(cx.waker().clone());
            Poll::Pending
        });
        if tokio::time::timeout(Duration::from_secs(3600), waiting)
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}; events: {:#?}", self.events());
        }
    }

    /// Waits until an event on `target` whose message starts with `message` was captured.
    pub async fn wait_for_event(&self, target: &str, message: &str) {
        self.wait_for(&format!("`{target}` `{message}`"), |events| {
            events
                .iter()
                .any(|event| event.target == target && event.message.starts_with(message))
        })
        .await;
    }

    fn push_event(&self, event: CapturedEvent) {
        let waiters = {
            let mut state = self.lock();
            state.events.push(event);
            std::mem::take(&mut state.waiters)
        };
        for waiter in waiters {
            waiter.wake();
        }
    }
}

/// The `Layer` of a [`Capture`].
pub struct CaptureLayer(Capture);

/// Records fields as strings.
struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

fn key_of<S>(span: &SpanRef<'_, S>) -> Option<SpanKey>
where
    S: for<'a> LookupSpan<'a>,
{
    span.extensions().get::<SpanKey>().copied()
}

fn parent_of<S>(span: Option<SpanRef<'_, S>>) -> Option<Parent>
where
    S: for<'a> LookupSpan<'a>,
{
    let span = span?;
    Some(Parent {
        key: key_of(&span)?,
        name: span.name().to_owned(),
    })
}

impl<S> Layer<S> for CaptureLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // Never `never`: interest is cached per callsite across the threads of a test binary, and
    // other tests want these callsites.
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        self.0.filter.is_none_or(|filter| filter(metadata))
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let key = {
            let mut state = self.0.lock();
            state.next_key += 1;
            SpanKey(state.next_key)
        };
        span.extensions_mut().insert(key);
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let captured = CapturedSpan {
            key,
            name: attrs.metadata().name().to_owned(),
            target: attrs.metadata().target().to_owned(),
            level: *attrs.metadata().level(),
            fields,
            recorded: BTreeMap::new(),
            parent: parent_of(span.parent()),
            closed: false,
        };
        self.0.lock().spans.push(captured);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(key) = ctx.span(id).as_ref().and_then(key_of) else {
            return;
        };
        let mut recorded = BTreeMap::new();
        values.record(&mut Fields(&mut recorded));
        let mut state = self.0.lock();
        if let Some(span) = state.spans.iter_mut().find(|span| span.key == key) {
            span.recorded.extend(recorded);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        self.0.push_event(CapturedEvent {
            target: event.metadata().target().to_owned(),
            level: *event.metadata().level(),
            message,
            fields,
            parent: parent_of(ctx.event_span(event)),
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(key) = ctx.span(&id).as_ref().and_then(key_of) else {
            return;
        };
        let mut state = self.0.lock();
        if let Some(span) = state.spans.iter_mut().find(|span| span.key == key) {
            span.closed = true;
        }
    }
}

/// Where the first call to `needle` (such as `"spawn("`) at or after line `line` of `source`
/// (the text of `file`) is, as `file:line:column`: the form of `task.spawned_at` and
/// `cause.location`. A `#[track_caller]` method's location is its name's.
#[track_caller]
pub fn site(source: &str, file: &str, line: u32, needle: &str) -> String {
    let (index, column) = source
        .lines()
        .enumerate()
        .skip(line as usize - 1)
        .find_map(|(index, text)| text.find(needle).map(|column| (index, column)))
        .unwrap_or_else(|| panic!("no `{needle}` at or after line {line} of {file}"));
    format!("{file}:{}:{}", index + 1, column + 1)
}

/// An in-memory `io::Write` whose clones share one buffer.
#[derive(Clone, Default)]
pub struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    pub fn contents(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8(bytes.clone()).expect("audit lines are UTF-8")
    }

    pub fn lines(&self) -> Vec<String> {
        self.contents().lines().map(str::to_owned).collect()
    }
}

impl io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
