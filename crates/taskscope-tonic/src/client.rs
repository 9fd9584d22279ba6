//! [`CallScopeLayer`]: outgoing calls made under a scope carry its remaining time, and are
//! cancelled on the wire when it is cancelled.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use taskscope::futures::CancelledOwned;
use taskscope::{Cause, CauseKind, Scope};
use taskscope_select::tower::parse_grpc_timeout;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::StatusPolicy;

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Puts `scope` on an outgoing `request`, for [`CallScopeLayer`] to bind the call to it.
///
/// ```
/// use taskscope::Scope;
///
/// let scope = Scope::new();
/// let request = taskscope_tonic::with_scope(tonic::Request::new(()), &scope);
/// assert!(request.extensions().get::<Scope>().is_some());
/// ```
pub fn with_scope<T>(mut request: tonic::Request<T>, scope: &Scope) -> tonic::Request<T> {
    request.extensions_mut().insert(scope.clone());
    request
}

/// A tower [`Layer`] for a gRPC client (a tonic `Channel`): a call whose request carries a
/// [`Scope`] ([`with_scope`]) is bound to it.
///
/// - **Deadline budget.** The call carries the scope's remaining time as `grpc-timeout`, or
///   the timeout the caller set on the request (`tonic::Request::set_timeout`) if that is
///   shorter: a budget only shrinks from hop to hop. The time is rounded down to the unit that
///   fits gRPC's eight digits. The caller's own timeout is timed here too, so that it fails
///   the call with `DEADLINE_EXCEEDED` (tonic's client, timing it on its own, would answer
///   `CANCELLED`).
/// - **Cancel on the wire.** When the scope is cancelled before the response's head arrives,
///   the call's future is dropped, which resets the HTTP/2 stream (the server's request scope
///   sees its client go), and the call fails with the status of the scope's cause
///   ([`StatusPolicy`], detail included: it is this process's own). A call made under a scope
///   that is already cancelled is not sent.
///
/// A request without a scope passes through untouched. Only the response's head is bound: a
/// streaming response's messages are read by the caller, who can stop reading (dropping the
/// stream resets it too).
///
/// ```no_run
/// use taskscope_tonic::CallScopeLayer;
/// use tonic::transport::Channel;
/// use tower_layer::Layer;
///
/// # async fn run() -> Result<(), tonic::transport::Error> {
/// let channel = Channel::from_static("http://127.0.0.1:50051").connect().await?;
/// let channel = CallScopeLayer::new().layer(channel);
/// // let client = InventoryClient::new(channel);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct CallScopeLayer {
    policy: StatusPolicy,
}

impl CallScopeLayer {
    /// A layer whose failed calls carry their cause's detail.
    pub fn new() -> Self {
        CallScopeLayer {
            policy: StatusPolicy::default().expose_detail(true),
        }
    }
}

impl<S> Layer<S> for CallScopeLayer {
    type Service = CallScope<S>;

    fn layer(&self, inner: S) -> CallScope<S> {
        CallScope {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The service made by [`CallScopeLayer`].
#[derive(Clone, Debug)]
pub struct CallScope<S> {
    inner: S,
    policy: StatusPolicy,
}

impl<S, B, ResBody> Service<Request<B>> for CallScope<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(scope) = request.extensions().get::<Scope>().cloned() else {
            return CallFuture::unbound(self.inner.call(request), &self.policy);
        };
        if let Some(cause) = scope.cause() {
            return CallFuture::refused(self.policy.status(&cause).into_http());
        }
        let explicit = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_grpc_timeout(value).ok());
        // The caller's own timeout, when it ends before the scope's deadline: timed here, so
        // that it fails as a deadline (tonic's client times it too, and answers `CANCELLED`).
        let own = match (explicit, scope.remaining()) {
            (Some(explicit), Some(remaining)) if explicit < remaining => Some(explicit),
            (Some(explicit), None) => Some(explicit),
            _ => None,
        };
        // The caller's own header stays when it is the shorter; else the scope's budget.
        if let (None, Some(remaining)) = (own, scope.remaining()) {
            request
                .headers_mut()
                .insert(GRPC_TIMEOUT, encode_grpc_timeout(remaining));
        }
        // The caller's own timer starts before the call does, so that it ends no later than
        // tonic's, which starts inside the call.
        let own = own.map(|timeout| (Box::pin(tokio::time::sleep(timeout)), timeout));
        CallFuture::bound(self.inner.call(request), scope, own, &self.policy)
    }
}

pin_project! {
    /// The response future of [`CallScope`] and of [`Answer`](crate::Answer).
    pub struct CallFuture<F: Future> {
        #[pin]
        inner: Option<F>,
        cancelled: Option<CancelledOwned>,
        // The caller's own timeout, if shorter than the scope's: its end, and its length.
        own: Option<(Pin<Box<Sleep>>, Duration)>,
        policy: StatusPolicy,
        refused: Option<F::Output>,
    }
}

impl<F: Future> CallFuture<F> {
    pub(crate) fn unbound(inner: F, policy: &StatusPolicy) -> Self {
        CallFuture {
            inner: Some(inner),
            cancelled: None,
            own: None,
            policy: policy.clone(),
            refused: None,
        }
    }

    pub(crate) fn bound(
        inner: F,
        scope: Scope,
        own: Option<(Pin<Box<Sleep>>, Duration)>,
        policy: &StatusPolicy,
    ) -> Self {
        CallFuture {
            inner: Some(inner),
            cancelled: Some(scope.cancelled_owned()),
            own,
            policy: policy.clone(),
            refused: None,
        }
    }
}

impl<F, ResBody, E> CallFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    fn refused(response: Response<ResBody>) -> Self {
        CallFuture {
            inner: None,
            cancelled: None,
            own: None,
            policy: StatusPolicy::default(),
            refused: Some(Ok(response)),
        }
    }
}

impl<F, ResBody, E> Future for CallFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(refused) = this.refused.take() {
            return Poll::Ready(refused);
        }
        // The scope wins a tie, as every taskscope adapter does: no response is read from a
        // call whose scope was cancelled.
        if let Some(cancelled) = this.cancelled.as_mut()
            && let Poll::Ready(cause) = Pin::new(cancelled).poll(cx)
        {
            // Dropping the call resets its stream.
            this.inner.set(None);
            *this.cancelled = None;
            return Poll::Ready(Ok(this.policy.status(&cause).into_http()));
        }
        if let Some((timer, timeout)) = this.own.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            let cause = Cause::of_kind(CauseKind::DeadlineExceeded)
                .with_detail(format!("the caller's own timeout of {timeout:?} passed"));
            this.inner.set(None);
            *this.own = None;
            return Poll::Ready(Ok(this.policy.status(&cause).into_http()));
        }
        match this.inner.as_pin_mut() {
            Some(inner) => inner.poll(cx),
            None => Poll::Pending,
        }
    }
}

/// `budget` as a `grpc-timeout` value: at most eight digits, in the finest unit that fits,
/// rounded down so that the budget never grows.
fn encode_grpc_timeout(budget: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = budget.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let (value, unit) = units
        .iter()
        .map(|&(per, unit)| (nanos / per, unit))
        .find(|&(value, _)| value <= MAX)
        .unwrap_or((MAX, 'H'));
    HeaderValue::from_str(&format!("{value}{unit}")).expect("digits and a letter")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::encode_grpc_timeout;

    #[test]
    fn a_budget_is_encoded_in_the_finest_unit_that_fits_rounded_down() {
        let encoded = |budget| encode_grpc_timeout(budget).to_str().unwrap().to_owned();
        assert_eq!(encoded(Duration::from_millis(50)), "50000000n");
        assert_eq!(encoded(Duration::from_millis(750)), "750000u");
        assert_eq!(encoded(Duration::from_nanos(750_000_999)), "750000u");
        assert_eq!(encoded(Duration::from_secs(3600)), "3600000m");
        assert_eq!(encoded(Duration::from_secs(200_000)), "200000S");
        assert_eq!(encoded(Duration::ZERO), "0n");
        assert_eq!(encoded(Duration::MAX), "99999999H");
    }
}
