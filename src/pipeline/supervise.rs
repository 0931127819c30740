//! Panic containment. A panic while handling one request is caught where the request
//! is handled, counted in `stackline_component_panics_total{component}`, and costs
//! that request only (the caller counts it as dropped); the component keeps serving.
//! A panic that still escapes a component's task is seen by the graph, which marks the
//! component dead (failing `/health/live`) and counts it the same way.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use crate::telemetry::names;

/// A caught panic: what it said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("panicked: {message}")]
pub struct Panicked {
    pub message: String,
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}

/// Counts and logs a panic of `component`.
pub fn record_panic(component: &str, message: &str) {
    metrics::counter!(names::COMPONENT_PANICS, "component" => component.to_owned()).increment(1);
    tracing::error!(
        component,
        panic = message,
        "caught a panic; the request it held is dropped and counted, the component keeps serving"
    );
}

/// Runs `f`, catching a panic: counted for `component`, returned as [`Panicked`].
pub fn catch<T>(component: &str, f: impl FnOnce() -> T) -> Result<T, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let message = panic_message(&*p);
        record_panic(component, &message);
        Panicked { message }
    })
}

/// Awaits `fut`, catching a panic in any of its polls (see [`catch`]).
pub async fn catch_async<F: Future>(component: &str, fut: F) -> Result<F::Output, Panicked> {
    CatchUnwind { fut: Box::pin(fut) }.await.map_err(|p| {
        let message = panic_message(&*p);
        record_panic(component, &message);
        Panicked { message }
    })
}

/// The future is boxed, so polling it needs no pin projection (one allocation per
/// supervised task, made once when it starts).
struct CatchUnwind<F> {
    fut: Pin<Box<F>>,
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let fut = self.fut.as_mut();
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_are_caught_with_their_message() {
        let r = catch("processor/x", || -> u32 { panic!("bad build id {}", 7) });
        assert_eq!(r.unwrap_err().message, "bad build id 7");
        assert_eq!(catch("processor/x", || 3).unwrap(), 3);
        let r = catch_async("exporter/y", async {
            tokio::task::yield_now().await;
            if true {
                panic!("after a yield");
            }
            1
        })
        .await;
        assert_eq!(r.unwrap_err().message, "after a yield");
    }
}
