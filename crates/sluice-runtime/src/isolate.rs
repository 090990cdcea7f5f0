//! Isolation: a panicking task becomes a job failure carrying its message and the stack
//! where it panicked, never a process abort or a lost cause.
//!
//! ```text
//!  task future ──poll──> panic ──hook: keep the stack (thread-local)──> unwind
//!        Guarded::poll catches it ──> Err(internal error: "task panicked: …" + stack)
//! ```

use std::backtrace::Backtrace;
use std::cell::RefCell;
use std::future::Future;
use std::panic::{AssertUnwindSafe, Location};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

use sluice_types::SluiceError;

thread_local! {
    /// The stack and place of the last panic on this thread.
    static LAST_PANIC: RefCell<Option<(Backtrace, String)>> = const { RefCell::new(None) };
}

/// Keeps each panic's stack for [`Guarded`], then lets the previous hook report it.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let place = info.location().map(Location::to_string).unwrap_or_default();
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((Backtrace::force_capture(), place)));
            previous(info);
        }));
    });
}

/// A task future whose panics become errors, named by its task; with a job's memory
/// account, what it allocates while polled is charged there, and the job going over its
/// limit ends the task with an error.
pub(crate) struct Guarded<F> {
    task: String,
    inner: Pin<Box<F>>,
    memory: Option<std::sync::Arc<crate::memory::JobMemory>>,
}

/// Guards task `task`'s future: an error or a panic ends it with `(task, error)`.
pub(crate) fn guarded<F>(task: String, fut: F) -> Guarded<F>
where
    F: Future<Output = sluice_types::Result<()>>,
{
    install_hook();
    Guarded {
        task,
        inner: Box::pin(fut),
        memory: None,
    }
}

impl<F> Guarded<F> {
    /// Charges the task's allocations to `memory` and holds the task to its limit.
    pub(crate) fn charged_to(mut self, memory: &std::sync::Arc<crate::memory::JobMemory>) -> Self {
        self.memory = Some(std::sync::Arc::clone(memory));
        self
    }
}

impl<F> Future for Guarded<F>
where
    F: Future<Output = sluice_types::Result<()>>,
{
    type Output = Result<(), (String, SluiceError)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `Guarded` is `Unpin` (its future is boxed): its fields are borrowed apart.
        let this = self.get_mut();
        let previous = this.memory.as_ref().map(|m| m.enter());
        let inner = this.inner.as_mut();
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx)));
        if let Some(p) = previous {
            crate::memory::leave(p);
        }
        if let Some((used, limit)) = this.memory.as_ref().and_then(|m| m.over_limit())
            && !matches!(polled, Ok(Poll::Ready(Ok(()))))
        {
            let err = SluiceError::user(format!(
                "the job holds {} of memory, above its limit of {} ('sluice.job.memory-limit'); task `{}` stopped it",
                crate::memory::human_bytes(used),
                crate::memory::human_bytes(limit),
                this.task
            ));
            return Poll::Ready(Err((std::mem::take(&mut this.task), err)));
        }
        let err = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(()))) => return Poll::Ready(Ok(())),
            Ok(Poll::Ready(Err(e))) => e,
            Err(payload) => {
                let msg = sluice_types::panic_message(payload.as_ref());
                let (trace, place) = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| (Backtrace::force_capture(), String::new()));
                let at = if place.is_empty() {
                    String::new()
                } else {
                    format!(" at {place}")
                };
                SluiceError::internal(format!("task `{}` panicked{at}: {msg}", this.task))
                    .with_backtrace(trace)
            }
        };
        Poll::Ready(Err((std::mem::take(&mut this.task), err)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_with_its_stack() {
        let r = guarded("boom[0]".into(), async {
            let v: Vec<u8> = Vec::new();
            if v.is_empty() {
                panic!("the operator broke on record 7");
            }
            Ok(())
        })
        .await;
        let (task, e) = r.expect_err("the panic is an error");
        assert_eq!(task, "boom[0]");
        assert!(e.message.contains("the operator broke on record 7"), "{e}");
        assert!(e.message.contains("isolate.rs"), "the panic's place: {e}");
        let trace = e.backtrace().expect("a panic keeps its stack").to_string();
        assert!(
            trace.contains("a_panic_becomes_an_error_with_its_stack"),
            "{trace}"
        );
        assert!(e.report().contains("stack backtrace:"));
    }

    #[tokio::test]
    async fn errors_pass_through_with_their_task() {
        let r = guarded("t".into(), async { Err(SluiceError::user("bad")) }).await;
        let (task, e) = r.expect_err("an error");
        assert_eq!((task.as_str(), e.message.as_str()), ("t", "bad"));
    }
}
