use std::fmt;

/// Whose fault an error is; decides how it is reported and whether a restart can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input, SQL, configuration or data: the user must change something.
    User,
    /// An outside system (broker, file system, network) failed.
    External,
    /// A bug or broken invariant in Sluice.
    Internal,
    /// What the job asks for is forbidden where it runs (a file outside the server's
    /// sandbox): the user must change the job or the server its policy.
    Denied,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::User => "user error",
            ErrorKind::External => "external error",
            ErrorKind::Internal => "internal error",
            ErrorKind::Denied => "not allowed",
        })
    }
}

/// The error type of Sluice's libraries.
#[derive(thiserror::Error)]
pub struct SluiceError {
    /// Whose fault.
    pub kind: ErrorKind,
    /// Whether retrying (restarting) may succeed.
    pub retriable: bool,
    /// The operator that raised it, if any.
    pub operator: Option<String>,
    /// What went wrong, for a person.
    pub message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// Where it was raised: captured as `RUST_LIB_BACKTRACE` / `RUST_BACKTRACE` say
    /// (the `sluice` binary turns it on unless told otherwise); always for internal
    /// errors and panics.
    trace: Option<std::sync::Arc<std::backtrace::Backtrace>>,
}

/// `Result` with [`SluiceError`].
pub type Result<T, E = SluiceError> = std::result::Result<T, E>;

impl fmt::Debug for SluiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The stack is left out: `report()` has it, a `{:?}` wants the error.
        f.debug_struct("SluiceError")
            .field("kind", &self.kind)
            .field("retriable", &self.retriable)
            .field("operator", &self.operator)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SluiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A user's mistake needs no label: the message says what to change.
        let label = match self.kind {
            ErrorKind::User => String::new(),
            kind => kind.to_string(),
        };
        match (&self.operator, label.is_empty()) {
            (Some(op), true) => write!(f, "in operator `{op}`: ")?,
            (Some(op), false) => write!(f, "{label} in operator `{op}`: ")?,
            (None, false) => write!(f, "{label}: ")?,
            (None, true) => {}
        }
        f.write_str(&self.message)?;
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl SluiceError {
    fn new(kind: ErrorKind, retriable: bool, message: impl Into<String>) -> Self {
        Self {
            kind,
            retriable,
            operator: None,
            message: message.into(),
            source: None,
            trace: capture(kind),
        }
    }

    /// The user must fix input, configuration or code.
    pub fn user(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::User, false, message)
    }

    /// An outside system failed; a retry may help.
    pub fn external(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::External, true, message)
    }

    /// The job asks for something the place it runs forbids.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Denied, false, message)
    }

    /// An invariant of Sluice was broken.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, false, message)
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The stack where the error was raised (or the panic happened), if captured.
    pub fn backtrace(&self) -> Option<&std::backtrace::Backtrace> {
        self.trace.as_deref()
    }

    /// The captured stack as text, starting at the frame that raised the error (the
    /// frames of the capture itself left out).
    pub fn backtrace_text(&self) -> Option<String> {
        let full = self.trace.as_ref()?.to_string();
        let mut out = String::with_capacity(full.len());
        let mut leading = true;
        for line in full.lines() {
            let t = line.trim_start();
            let header = t
                .split_once(": ")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok());
            if header && leading {
                leading = t.contains("sluice_types::error::");
            }
            if !leading {
                out.push_str(line);
                out.push('\n');
            }
        }
        Some(out)
    }

    /// Replaces the captured stack (a panic's, taken where it happened).
    pub fn with_backtrace(mut self, trace: std::backtrace::Backtrace) -> Self {
        self.trace = (trace.status() == std::backtrace::BacktraceStatus::Captured)
            .then(|| std::sync::Arc::new(trace));
        self
    }

    /// The message with every cause, one per line, then the stack if captured: what a
    /// person needs to see for a failure.
    pub fn report(&self) -> String {
        use std::fmt::Write as _;
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self).and_then(|s| s.source());
        while let Some(c) = cause {
            let _ = write!(out, "\ncaused by: {c}");
            cause = c.source();
        }
        if let Some(t) = self.backtrace_text() {
            let _ = write!(out, "\nstack backtrace:\n{t}");
        }
        out
    }

    /// Names the operator that raised the error (kept if already set).
    pub fn in_operator(mut self, operator: &str) -> Self {
        if self.operator.is_none() {
            self.operator = Some(operator.to_string());
        }
        self
    }
}

static ALWAYS_CAPTURE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes every error keep the stack where it was raised (the `sluice` binary does,
/// unless `RUST_LIB_BACKTRACE=0`). A capture costs microseconds: errors are rare.
pub fn capture_backtraces(on: bool) {
    ALWAYS_CAPTURE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Internal errors are bugs: always keep their stack. Others as [`capture_backtraces`]
/// or the environment say (`Backtrace::capture` costs nothing when turned off).
fn capture(kind: ErrorKind) -> Option<std::sync::Arc<std::backtrace::Backtrace>> {
    let always = ALWAYS_CAPTURE.load(std::sync::atomic::Ordering::Relaxed);
    let t = match kind {
        ErrorKind::Internal => std::backtrace::Backtrace::force_capture(),
        _ if always => std::backtrace::Backtrace::force_capture(),
        _ => std::backtrace::Backtrace::capture(),
    };
    (t.status() == std::backtrace::BacktraceStatus::Captured).then(|| std::sync::Arc::new(t))
}

impl From<arrow::error::ArrowError> for SluiceError {
    fn from(e: arrow::error::ArrowError) -> Self {
        // Compute kernels fail on data (overflow, bad casts, division by zero) far more
        // often than on bugs, so Arrow errors are reported as the user's to fix.
        SluiceError::user("Arrow computation failed").with_source(e)
    }
}

impl From<std::io::Error> for SluiceError {
    fn from(e: std::io::Error) -> Self {
        SluiceError::external("I/O failed").with_source(e)
    }
}

/// The message of a panic's payload (`panic!("…")` carries a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
