//! [`Cause`]: why a scope was cancelled.

use std::any::Any;
use std::borrow::Cow;
use std::cell::Cell;
use std::error::Error;
use std::fmt;
use std::panic::{Location, RefUnwindSafe, UnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use std::time::SystemTime;

use tokio::time::Instant;

use crate::path::{self, PathLink};

#[cfg(feature = "serde")]
mod record;

/// Why a scope was cancelled.
///
/// A cause is cheap to clone (one `Arc`), immutable, and shared: every scope that a cancellation
/// reached reports the same cause. It carries
///
/// - a [`kind`](Cause::kind) from a closed taxonomy, to tell a timeout from a failure from a
///   plain cancel;
/// - a stable, low-cardinality [`code`](Cause::code) fit for metric labels
///   (`"INVENTORY_SHORTAGE"`, `"deadline"`);
/// - free human text in [`detail`](Cause::detail), never meant as a label;
/// - optionally a wrapped user error, reachable through [`Error::source`] and
///   [`downcast_ref`](Cause::downcast_ref);
/// - once it has cancelled a scope: the [`origin`](Cause::origin) path of that scope, the time
///   [`at`](Cause::at) which it happened and the [`location`](Cause::location) of the call that
///   set it.
///
/// ```
/// use taskscope::{Cause, CauseKind, Scope};
///
/// #[derive(Debug)]
/// struct Shortage { sku: &'static str }
/// impl std::fmt::Display for Shortage {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "{} is out of stock", self.sku)
///     }
/// }
/// impl std::error::Error for Shortage {}
///
/// let order = Scope::builder().name("orders").build();
/// let payment = order.child();
/// order.cancel(
///     Cause::new("INVENTORY_SHORTAGE")
///         .with_detail("only 2 left")
///         .with_source(Shortage { sku: "sku-42" }),
/// );
///
/// let cause = payment.cause().expect("payment was cancelled with the order");
/// assert_eq!(cause.kind(), CauseKind::Explicit);
/// assert_eq!(cause.code(), "INVENTORY_SHORTAGE");
/// assert_eq!(cause.detail(), Some("only 2 left"));
/// assert_eq!(cause.origin(), Some("orders"));
/// assert_eq!(cause.downcast_ref::<Shortage>().unwrap().sku, "sku-42");
/// assert_eq!(cause.to_string(), "cancelled (INVENTORY_SHORTAGE): only 2 left");
/// ```
#[derive(Clone)]
pub struct Cause {
    inner: Arc<Inner>,
}

/// Every cancellation allocates one of these: with the `Arc`'s counts, 120 bytes, a size glibc
/// serves from its fast bins (`docs/performance.md`, the scope tree under contention).
#[derive(Clone)]
struct Inner {
    kind: CauseKind,
    code: Cow<'static, str>,
    /// Detail and source, which not every cause has, out of line.
    extra: Option<Box<Extra>>,
    origin: Option<Origin>,
    /// When, on tokio's clock: for measuring how long tasks take to stop, and the source of
    /// `at`. Not serialised; `None` for a cause decoded from a record.
    instant: Option<Instant>,
    /// When, on the wall clock, in nanoseconds since the Unix epoch (the years 1678 to 2262), or
    /// [`NO_TIME`].
    at_ns: i64,
    location: Option<CallSite>,
}

#[derive(Clone, Default)]
struct Extra {
    detail: Option<Cow<'static, str>>,
    source: Option<Arc<dyn Payload>>,
}

// Pinned: a field more, and every cancellation's allocation leaves the fast bins.
const _: () = assert!(std::mem::size_of::<Inner>() <= 104);

/// `Inner::at_ns` of a cause that has not taken effect.
const NO_TIME: i64 = i64::MIN;

// A cause is immutable once built and only ever shared by reference, so a panic cannot leave one
// half-updated; the wrapped user error is only read.
impl UnwindSafe for Cause {}
impl RefUnwindSafe for Cause {}

/// The kind of a [`Cause`]: what happened, as opposed to the domain [`code`](Cause::code).
///
/// The taxonomy is closed so that code can match on it exhaustively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CauseKind {
    /// Someone called [`Scope::cancel`](crate::Scope::cancel).
    Explicit,
    /// A deadline (a timeout) passed.
    DeadlineExceeded,
    /// A task failed with an error, and its failure cancelled its siblings.
    TaskFailed,
    /// A task panicked.
    TaskPanicked,
    /// The program or a supervisor is shutting down (a signal, a shutdown request).
    Shutdown,
    /// A group or scope guard was dropped while work was still running.
    Dropped,
}

impl CauseKind {
    /// The code a cause of this kind has unless it is given one: `"cancelled"`, `"deadline"`,
    /// `"task_failed"`, `"panicked"`, `"shutdown"` or `"dropped"`.
    pub const fn default_code(self) -> &'static str {
        match self {
            CauseKind::Explicit => "cancelled",
            CauseKind::DeadlineExceeded => "deadline",
            CauseKind::TaskFailed => "task_failed",
            CauseKind::TaskPanicked => "panicked",
            CauseKind::Shutdown => "shutdown",
            CauseKind::Dropped => "dropped",
        }
    }

    /// The stable name of this kind in records and events: `"explicit"`,
    /// `"deadline_exceeded"`, `"task_failed"`, `"task_panicked"`, `"shutdown"` or `"dropped"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CauseKind::Explicit => "explicit",
            CauseKind::DeadlineExceeded => "deadline_exceeded",
            CauseKind::TaskFailed => "task_failed",
            CauseKind::TaskPanicked => "task_panicked",
            CauseKind::Shutdown => "shutdown",
            CauseKind::Dropped => "dropped",
        }
    }

    /// The kind whose [`as_str`](CauseKind::as_str) name is `name`.
    pub fn from_name(name: &str) -> Option<CauseKind> {
        CauseKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// Every kind, in declaration order.
    pub const ALL: [CauseKind; 6] = [
        CauseKind::Explicit,
        CauseKind::DeadlineExceeded,
        CauseKind::TaskFailed,
        CauseKind::TaskPanicked,
        CauseKind::Shutdown,
        CauseKind::Dropped,
    ];

    /// The phrase a cause's message starts with: `"cancelled"`, `"deadline exceeded"`, ...
    const fn describe(self) -> &'static str {
        match self {
            CauseKind::Explicit => "cancelled",
            CauseKind::DeadlineExceeded => "deadline exceeded",
            CauseKind::TaskFailed => "task failed",
            CauseKind::TaskPanicked => "task panicked",
            CauseKind::Shutdown => "shut down",
            CauseKind::Dropped => "dropped",
        }
    }
}

impl fmt::Display for CauseKind {
    /// Its one spelling, [`as_str`](CauseKind::as_str): `task_failed`, as records, events and
    /// metrics name it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in the source a cause was set: the caller of `cancel`, or of the builder call that
/// gave a scope its deadline.
#[derive(Clone)]
pub struct CallSite(Site);

#[derive(Clone)]
enum Site {
    /// A call in this program: a pointer, nothing copied.
    Code(&'static std::panic::Location<'static>),
    /// A call site decoded from a record.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))]
    Recorded(Arc<(Box<str>, u32, u32)>),
}

impl CallSite {
    /// The source file.
    pub fn file(&self) -> &str {
        match &self.0 {
            Site::Code(location) => location.file(),
            Site::Recorded(site) => &site.0,
        }
    }

    /// The line, starting at 1.
    pub fn line(&self) -> u32 {
        match &self.0 {
            Site::Code(location) => location.line(),
            Site::Recorded(site) => site.1,
        }
    }

    /// The column, starting at 1.
    pub fn column(&self) -> u32 {
        match &self.0 {
            Site::Code(location) => location.column(),
            Site::Recorded(site) => site.2,
        }
    }

    #[cfg(feature = "serde")]
    fn recorded(file: String, line: u32, column: u32) -> CallSite {
        CallSite(Site::Recorded(Arc::new((file.into(), line, column))))
    }

    fn key(&self) -> (&str, u32, u32) {
        (self.file(), self.line(), self.column())
    }
}

impl From<&'static std::panic::Location<'static>> for CallSite {
    fn from(location: &'static std::panic::Location<'static>) -> Self {
        CallSite(Site::Code(location))
    }
}

impl PartialEq for CallSite {
    fn eq(&self, other: &CallSite) -> bool {
        self.key() == other.key()
    }
}

impl Eq for CallSite {}

impl std::hash::Hash for CallSite {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl fmt::Debug for CallSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallSite")
            .field("file", &self.file())
            .field("line", &self.line())
            .field("column", &self.column())
            .finish()
    }
}

impl fmt::Display for CallSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file(), self.line(), self.column())
    }
}

impl Cause {
    /// An explicit cancellation with a domain `code`, such as `"INVENTORY_SHORTAGE"`.
    ///
    /// Codes are meant for metric labels and alerts: keep them few and stable, and put anything
    /// that varies into [`with_detail`](Cause::with_detail). An empty code stands for the kind's
    /// [default code](CauseKind::default_code).
    pub fn new(code: &'static str) -> Cause {
        Cause::of_kind(CauseKind::Explicit).with_code(code)
    }

    /// A plain cancellation: kind [`Explicit`](CauseKind::Explicit), code `"cancelled"`.
    pub fn plain() -> Cause {
        Cause::of_kind(CauseKind::Explicit)
    }

    /// A cause of the given kind with that kind's [default code](CauseKind::default_code).
    ///
    /// ```
    /// use taskscope::{Cause, CauseKind};
    ///
    /// let cause = Cause::of_kind(CauseKind::Shutdown).with_detail("SIGTERM");
    /// assert_eq!(cause.code(), "shutdown");
    /// assert_eq!(cause.to_string(), "shut down: SIGTERM");
    /// ```
    pub fn of_kind(kind: CauseKind) -> Cause {
        Cause {
            inner: Arc::new(Inner {
                kind,
                code: Cow::Borrowed(kind.default_code()),
                extra: None,
                origin: None,
                instant: None,
                at_ns: NO_TIME,
                location: None,
            }),
        }
    }

    /// Replaces the code. An empty code stands for the kind's default code.
    pub fn with_code(mut self, code: &'static str) -> Cause {
        let inner = self.inner_mut();
        inner.code = Cow::Borrowed(if code.is_empty() {
            inner.kind.default_code()
        } else {
            code
        });
        self
    }

    /// Attaches human-readable detail. It appears in `Display`, logs and audit records, never in
    /// metric labels.
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Cause {
        self.extra_mut().detail = Some(detail.into());
        self
    }

    /// Records `location` as the call that asked for this cancellation. [`Scope::cancel`]
    /// records its own caller for a cause without one; code that cancels on its user's behalf
    /// (a signal handler, a bridge from another cancellation mechanism) records its user's call
    /// site instead, so that [`location`](Cause::location) leads to the user's code:
    ///
    /// ```
    /// use std::panic::Location;
    /// use taskscope::{Cause, Scope};
    ///
    /// /// Cancels `scope` when `source` resolves: the cause names the caller of `cancel_when`.
    /// #[track_caller]
    /// fn cancel_when(scope: &Scope, source: impl FnOnce() -> Cause) {
    ///     let called_at = Location::caller();
    ///     scope.cancel(source().with_location(called_at));
    /// }
    ///
    /// let scope = Scope::new();
    /// let line = line!() + 1;
    /// cancel_when(&scope, || Cause::new("DONE"));
    /// assert_eq!(scope.cause().unwrap().location().unwrap().line(), line);
    /// ```
    ///
    /// [`Scope::cancel`]: crate::Scope::cancel
    pub fn with_location(mut self, location: &'static Location<'static>) -> Cause {
        self.inner_mut().location = Some(location.into());
        self
    }

    /// Wraps a user error or domain reason. It becomes this cause's [`Error::source`] and can be
    /// read back with [`downcast_ref`](Cause::downcast_ref).
    pub fn with_source<E>(self, source: E) -> Cause
    where
        E: Error + Send + Sync + 'static,
    {
        self.with_payload(Arc::new(ErrorPayload(source)))
    }

    /// What happened.
    pub fn kind(&self) -> CauseKind {
        self.inner.kind
    }

    /// The stable machine code, fit for metric labels.
    pub fn code(&self) -> &str {
        &self.inner.code
    }

    /// Whether the code came from outside this program: decoded from a record (another
    /// process's cause, a gRPC status's `ErrorInfo`), or lent by such a cause, rather than
    /// written in this program's source (`Cause::new("INVENTORY_SHORTAGE")`, a kind's default).
    /// A metric labelled by code counts foreign codes it does not know under one label, so
    /// that a peer cannot grow its label set.
    ///
    /// ```
    /// use taskscope::Cause;
    ///
    /// assert!(!Cause::new("INVENTORY_SHORTAGE").is_foreign_code());
    /// # #[cfg(feature = "serde")] {
    /// let decoded: Cause =
    ///     serde_json::from_str(r#"{"v":1,"kind":"explicit","code":"INVENTORY_SHORTAGE"}"#).unwrap();
    /// assert!(decoded.is_foreign_code());
    /// # }
    /// ```
    pub fn is_foreign_code(&self) -> bool {
        matches!(self.inner.code, Cow::Owned(_))
    }

    /// Free human text, if any.
    pub fn detail(&self) -> Option<&str> {
        self.inner.extra.as_ref()?.detail.as_deref()
    }

    /// The path of the scope this cause cancelled first (`"orders/reserve"`), once it has
    /// cancelled one. For a deadline, the scope that owns the deadline.
    ///
    /// A cancellation only links the cause to the scope's path; the string is built on the first
    /// call, and kept.
    pub fn origin(&self) -> Option<&str> {
        self.inner.origin.as_ref().map(Origin::as_str)
    }

    /// When the cancellation happened, once it has happened. For a deadline, the deadline
    /// itself, even if nobody looked until later.
    ///
    /// A cancellation reads only tokio's clock; its wall-clock time is that of this thread's
    /// last reading of the wall clock, at most a second old, advanced by tokio's clock since.
    pub fn at(&self) -> Option<SystemTime> {
        (self.inner.at_ns != NO_TIME).then(|| time_of_ns(self.inner.at_ns))
    }

    /// When the cancellation happened on tokio's clock (paused in tests), if it happened in this
    /// process.
    pub(crate) fn instant(&self) -> Option<Instant> {
        self.inner.instant
    }

    /// The call that set this cause: the caller of [`Scope::cancel`](crate::Scope::cancel), or
    /// for a deadline the caller that created the scope with it.
    pub fn location(&self) -> Option<&CallSite> {
        self.inner.location.as_ref()
    }

    /// The wrapped user error, if it is an `E`: the error given to
    /// [`with_source`](Cause::with_source), or the error a task of a
    /// [`TaskGroup`](crate::TaskGroup) failed with (also when that error is a boxed `E`).
    pub fn downcast_ref<E>(&self) -> Option<&E>
    where
        E: Error + 'static,
    {
        let payload = self.inner.extra.as_ref()?.source.as_deref()?;
        match payload.as_any().downcast_ref::<E>() {
            Some(error) => Some(error),
            None => payload.as_error()?.downcast_ref::<E>(),
        }
    }

    /// Whether two causes are the very same cancellation (not merely equal-looking).
    pub fn ptr_eq(&self, other: &Cause) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub(crate) fn with_payload(mut self, payload: Arc<dyn Payload>) -> Cause {
        self.extra_mut().source = Some(payload);
        self
    }

    /// Takes `other`'s code.
    pub(crate) fn with_code_of(mut self, other: &Cause) -> Cause {
        self.inner_mut().code = other.inner.code.clone();
        self
    }

    /// Sets the origin, unless the cause already has one.
    pub(crate) fn with_origin(mut self, origin: Option<Origin>) -> Cause {
        if self.inner.origin.is_none() && origin.is_some() {
            self.inner_mut().origin = origin;
        }
        self
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.inner_mut().extra.get_or_insert_with(Box::default)
    }

    /// Fills in where and when this cause took effect, keeping whatever it already carries (a
    /// cause passed on from elsewhere keeps its first origin).
    pub(crate) fn stamped(
        mut self,
        origin: impl FnOnce() -> Option<Origin>,
        at: Instant,
        location: &'static std::panic::Location<'static>,
    ) -> Cause {
        let origin = if self.inner.origin.is_none() {
            origin()
        } else {
            None
        };
        // Unchanged, it stays the very same cause (`ptr_eq`), so that errors echoing it are
        // recognised: also when it has no origin to get (an unnamed scope).
        let timed = self.inner.instant.is_some() && self.inner.at_ns != NO_TIME;
        if origin.is_none() && timed && self.inner.location.is_some() {
            return self;
        }
        let inner = self.inner_mut();
        if origin.is_some() {
            inner.origin = origin;
        }
        // A cause decoded from a record keeps its wall-clock time and takes tokio's here.
        inner.instant.get_or_insert(at);
        if inner.at_ns == NO_TIME {
            inner.at_ns = wall_clock_now(at);
        }
        inner.location.get_or_insert_with(|| location.into());
        self
    }

    /// [`stamped`](Cause::stamped) as of `moment`, read earlier: for a cause made after what it
    /// reports (a supervisor makes a failure's cause only once it is needed).
    pub(crate) fn stamped_as_of(
        mut self,
        origin: impl FnOnce() -> Option<Origin>,
        moment: Moment,
        location: &'static std::panic::Location<'static>,
    ) -> Cause {
        if self.inner.at_ns == NO_TIME {
            self.inner_mut().at_ns = moment.at_ns;
        }
        self.stamped(origin, moment.instant, location)
    }

    /// Sets the wall-clock time outright, instead of working it out from `instant` when read.
    pub(crate) fn with_wall_clock(mut self, at: SystemTime) -> Cause {
        self.inner_mut().at_ns = ns_of_time(at);
        self
    }

    /// This cause as a deadline's cause: its kind becomes [`CauseKind::DeadlineExceeded`] so a
    /// timeout is never mistaken for a harmless cancel; code, detail and source stay.
    pub(crate) fn into_deadline(mut self) -> Cause {
        if self.inner.kind != CauseKind::DeadlineExceeded {
            let inner = self.inner_mut();
            if inner.code == inner.kind.default_code() {
                inner.code = Cow::Borrowed(CauseKind::DeadlineExceeded.default_code());
            }
            inner.kind = CauseKind::DeadlineExceeded;
        }
        self
    }
}

impl Default for Cause {
    /// A [plain](Cause::plain) cancellation.
    fn default() -> Self {
        Cause::plain()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.write_str(inner.kind.describe())?;
        if inner.code != inner.kind.default_code() {
            write!(f, " ({})", inner.code)?;
        }
        if let Some(detail) = self.detail() {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let mut debug = f.debug_struct("Cause");
        debug.field("kind", &inner.kind).field("code", &inner.code);
        if let Some(detail) = self.detail() {
            debug.field("detail", &detail);
        }
        if let Some(source) = inner.extra.as_ref().and_then(|extra| extra.source.as_ref()) {
            debug.field("source", source);
        }
        if let Some(origin) = &inner.origin {
            debug.field("origin", &origin.as_str());
        }
        if let Some(at) = &self.at() {
            debug.field("at", at);
        }
        if let Some(location) = &inner.location {
            debug.field("location", &format_args!("{location}"));
        }
        debug.finish()
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.inner.extra.as_ref()?.source.as_deref()?.as_error()
    }
}

/// The wall-clock time of `now`, a reading of tokio's clock just taken, in nanoseconds since the
/// Unix epoch: this thread's last
/// reading of the wall clock, advanced by tokio's clock since; read again once it is a second
/// old, or when tokio's clock went back (another runtime's paused clock). So a cancellation reads
/// one clock, not two, and its time is off by at most what the wall clock was corrected by in
/// that second.
/// A moment as a cause records it, tokio's clock and the wall clock, read when something
/// happens, to stamp a cause made later ([`Cause::stamped_as_of`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Moment {
    instant: Instant,
    at_ns: i64,
}

impl Moment {
    /// The moment `instant`, tokio's clock as just read.
    pub(crate) fn at(instant: Instant) -> Moment {
        Moment {
            instant,
            at_ns: wall_clock_now(instant),
        }
    }
}

fn wall_clock_now(now: Instant) -> i64 {
    const FRESH_FOR: Duration = Duration::from_secs(1);
    thread_local! {
        /// The last reading, as (tokio's clock, nanoseconds since the Unix epoch).
        static LAST_READ: Cell<Option<(Instant, i64)>> = const { Cell::new(None) };
    }
    LAST_READ.with(|last| {
        if let Some((read_at, wall_ns)) = last.get()
            && let Some(since) = now.checked_duration_since(read_at)
            && since < FRESH_FOR
        {
            // Below a second: `as_nanos` fits in an i64.
            return wall_ns.saturating_add(since.as_nanos() as i64);
        }
        let wall_ns = ns_of_time(SystemTime::now());
        last.set(Some((now, wall_ns)));
        wall_ns
    })
}

/// The wall-clock time of `instant`, given that tokio's clock reads `now`.
pub(crate) fn wall_clock(instant: Instant, now: Instant) -> SystemTime {
    let wall = SystemTime::now();
    if instant <= now {
        wall.checked_sub(now - instant).unwrap_or(wall)
    } else {
        wall.checked_add(instant - now).unwrap_or(wall)
    }
}

/// Where a cause was set: a scope's path, rendered when first read.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    path: Arc<PathLink>,
    /// The path as text, once read, unless it is a single name. A thin pointer, to keep the
    /// cause small.
    #[allow(clippy::box_collection)]
    text: OnceLock<Box<String>>,
}

impl Origin {
    pub(crate) fn as_str(&self) -> &str {
        match self.path.single_name() {
            Some(name) => name,
            None => self.text.get_or_init(|| Box::new(path::render(&self.path))),
        }
    }
}

impl From<Arc<PathLink>> for Origin {
    fn from(path: Arc<PathLink>) -> Origin {
        Origin {
            path,
            text: OnceLock::new(),
        }
    }
}

impl From<Arc<str>> for Origin {
    /// A path that is text already: decoded from a record, or built by hand.
    fn from(text: Arc<str>) -> Origin {
        Origin::from(PathLink::text(text))
    }
}

/// Nanoseconds since the Unix epoch, saturating at the years 1678 and 2262, never [`NO_TIME`].
fn ns_of_time(at: SystemTime) -> i64 {
    exact_ns_of_time(at).unwrap_or(if at > SystemTime::UNIX_EPOCH {
        i64::MAX
    } else {
        NO_TIME + 1
    })
}

/// Nanoseconds since the Unix epoch, or `None` outside the years 1678 to 2262.
fn exact_ns_of_time(at: SystemTime) -> Option<i64> {
    let ns = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).ok()?,
        Err(before) => -i64::try_from(before.duration().as_nanos()).ok()?,
    };
    (ns != NO_TIME).then_some(ns)
}

fn time_of_ns(ns: i64) -> SystemTime {
    let since = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        SystemTime::UNIX_EPOCH + since
    } else {
        SystemTime::UNIX_EPOCH - since
    }
}

/// What a cause wraps: a user error ([`Cause::with_source`]) or the error a task failed with.
pub(crate) trait Payload: fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// The wrapped value itself, for [`Cause::downcast_ref`].
    fn as_any(&self) -> &dyn Any;
    /// The wrapped value as an error, if it is one: the cause's [`Error::source`].
    fn as_error(&self) -> Option<&(dyn Error + 'static)>;
}

/// A [`Payload`] that is a plain error.
#[derive(Debug)]
struct ErrorPayload<E>(E);

impl<E: fmt::Display> fmt::Display for ErrorPayload<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: Error + Send + Sync + 'static> Payload for ErrorPayload<E> {
    fn as_any(&self) -> &dyn Any {
        &self.0
    }

    fn as_error(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

/// Lets `Cause` hold an error that only survives as text (a decoded record's source).
#[cfg_attr(not(feature = "serde"), allow(dead_code))]
#[derive(Debug)]
struct RecordedSource(String);

impl fmt::Display for RecordedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for RecordedSource {}

#[cfg(feature = "serde")]
impl RecordedSource {
    fn payload(message: String) -> Arc<dyn Payload> {
        Arc::new(ErrorPayload(RecordedSource(message)))
    }
}
