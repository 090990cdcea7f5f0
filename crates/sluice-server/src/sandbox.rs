//! The file sandbox: where SQL jobs may read and write.

use crate::api::ApiError;
use axum::http::StatusCode;
use sluice_types::SluiceError;

/// Where SQL jobs may read and write files: inside these directories only (resolved,
/// symlinks and `..` included). Checkpoints and savepoints may also use the data
/// directory; remote URLs (`s3://…`) are not files and pass.
#[derive(Clone, Debug, Default)]
pub struct Sandbox {
    pub(crate) allowed: Vec<std::path::PathBuf>,
}

impl Sandbox {
    /// Files only under `dirs` (each must exist: a bad configuration fails at start-up).
    pub fn new(dirs: &[std::path::PathBuf]) -> sluice_types::Result<Self> {
        let allowed = dirs
            .iter()
            .map(|d| {
                std::fs::canonicalize(d).map_err(|e| {
                    SluiceError::user(format!(
                        "--allow-dir {}: not a directory this server can use",
                        d.display()
                    ))
                    .with_source(e)
                })
            })
            .collect::<sluice_types::Result<_>>()?;
        Ok(Self { allowed })
    }

    /// `path` made absolute with `..` and symlinks resolved as far as it exists.
    pub(crate) fn resolve(path: &std::path::Path) -> std::path::PathBuf {
        use std::path::Component;
        let abs = std::env::current_dir().unwrap_or_default().join(path);
        let mut lexical = std::path::PathBuf::new();
        for c in abs.components() {
            match c {
                Component::ParentDir => {
                    lexical.pop();
                }
                Component::CurDir => {}
                c => lexical.push(c),
            }
        }
        // The deepest part that exists, with its symlinks resolved, then the rest.
        let mut existing = lexical.clone();
        let mut rest = Vec::new();
        while !existing.exists() {
            match existing.file_name() {
                Some(n) => rest.push(n.to_os_string()),
                None => break,
            }
            existing.pop();
        }
        let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
        out.extend(rest.iter().rev());
        out
    }

    /// Fails unless `path` (named by `what`) is inside an allowed directory or `extra`.
    pub(crate) fn check(
        &self,
        what: &str,
        path: &str,
        extra: Option<&std::path::Path>,
    ) -> Result<(), ApiError> {
        if path.contains("://") && !path.starts_with("file://") {
            return Ok(());
        }
        let p = Self::resolve(std::path::Path::new(
            path.strip_prefix("file://").unwrap_or(path),
        ));
        let extra = extra.map(Self::resolve);
        if self
            .allowed
            .iter()
            .chain(extra.as_ref())
            .any(|d| p.starts_with(d))
        {
            return Ok(());
        }
        let dirs: Vec<String> = self
            .allowed
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            format!(
                "{what} `{path}` is outside the directories this server lets jobs use ({}); start the server with --allow-dir to add one",
                dirs.join(", ")
            ),
        ))
    }
}
