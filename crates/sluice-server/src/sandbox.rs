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

    /// `path` as the operating system would resolve it: made absolute, each symlink
    /// followed before a `..` after it is applied (as the kernel does), as far as the
    /// path exists; the missing rest is appended as written, its `..` applied lexically
    /// (creating the missing directories creates exactly those). `None` for a symlink
    /// loop or chain deeper than the kernel would follow.
    pub(crate) fn resolve(path: &std::path::Path) -> Option<std::path::PathBuf> {
        let cwd = std::env::current_dir().ok()?;
        let mut out = std::fs::canonicalize(&cwd).unwrap_or(cwd);
        let mut links = 0;
        Self::walk(path, &mut out, &mut links)?;
        Some(out)
    }

    fn walk(path: &std::path::Path, out: &mut std::path::PathBuf, links: &mut u32) -> Option<()> {
        use std::path::Component;
        for c in path.components() {
            match c {
                Component::Prefix(_) | Component::RootDir => *out = std::path::PathBuf::from("/"),
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(n) => {
                    out.push(n);
                    if let Ok(target) = std::fs::read_link(&*out) {
                        *links += 1;
                        if *links > 40 {
                            return None;
                        }
                        out.pop();
                        Self::walk(&target, out, links)?;
                    }
                }
            }
        }
        Some(())
    }

    /// Whether the local `path` (or `extra`) is inside an allowed directory.
    pub(crate) fn allows(&self, path: &std::path::Path, extra: Option<&std::path::Path>) -> bool {
        let Some(p) = Self::resolve(path) else {
            return false;
        };
        let extra = extra.and_then(Self::resolve);
        self.allowed
            .iter()
            .chain(extra.as_ref())
            .any(|d| p.starts_with(d))
    }

    fn refusal(&self, what: &str, path: &str) -> String {
        let dirs: Vec<String> = self
            .allowed
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        format!(
            "{what} `{path}` is outside the directories this server lets jobs use ({}); start the server with --allow-dir to add one",
            dirs.join(", ")
        )
    }

    /// Fails unless `location` (named by `what`) is a remote URL or a local path inside
    /// an allowed directory or `extra`, read as the checkpoint storage reads it.
    pub(crate) fn check(
        &self,
        what: &str,
        location: &str,
        extra: Option<&std::path::Path>,
    ) -> Result<(), ApiError> {
        match sluice_runtime::Location::parse(location) {
            sluice_runtime::Location::Remote(_) => Ok(()),
            sluice_runtime::Location::Local(p) if self.allows(&p, extra) => Ok(()),
            sluice_runtime::Location::Local(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "path_not_allowed",
                self.refusal(what, location),
            )),
        }
    }
}

/// The sandbox as the connectors see it: every file a connector option names is checked
/// before the connector opens anything (while planning, too). Keeps the first refusal
/// so that the server can answer 403 rather than a planning error.
pub(crate) struct SandboxGuard {
    sandbox: Sandbox,
    denied: std::sync::Mutex<Option<String>>,
}

impl SandboxGuard {
    pub(crate) fn new(sandbox: Sandbox) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            sandbox,
            denied: std::sync::Mutex::new(None),
        })
    }

    /// The refusal, as an API error, if a file was refused.
    pub(crate) fn refused(&self) -> Option<ApiError> {
        let d = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        d.as_ref()
            .map(|m| ApiError::new(StatusCode::FORBIDDEN, "path_not_allowed", m.clone()))
    }
}

impl sluice_runtime::FileGuard for SandboxGuard {
    fn check(&self, connector: &str, file: &sluice_runtime::NamedFile) -> sluice_types::Result<()> {
        if self.sandbox.allows(&file.path, None) {
            return Ok(());
        }
        let m = self.sandbox.refusal(
            &format!("{connector} option '{}'", file.option),
            &file.path.display().to_string(),
        );
        let mut d = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        d.get_or_insert_with(|| m.clone());
        Err(SluiceError::denied(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_is_followed_before_the_parent_step_after_it() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        let allowed = root.join("allowed");
        let deep = root.join("outside/deep");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&deep).unwrap();
        std::os::unix::fs::symlink(&deep, allowed.join("link")).unwrap();
        let sandbox = Sandbox::new(std::slice::from_ref(&allowed)).unwrap();
        // The kernel reads `allowed/link/../x` as `outside/x`, not `allowed/x`.
        let p = allowed.join("link/../x");
        assert_eq!(Sandbox::resolve(&p), Some(root.join("outside/x")));
        assert!(!sandbox.allows(&p, None));
        // A relative symlink resolves from its own directory.
        std::os::unix::fs::symlink("../outside", allowed.join("up")).unwrap();
        assert!(!sandbox.allows(&allowed.join("up/deep/f"), None));
        // Missing parts are taken as written; a loop is refused.
        assert!(sandbox.allows(&allowed.join("new/dir/../f"), None));
        assert!(!sandbox.allows(&allowed.join("new/../../f"), None));
        std::os::unix::fs::symlink("loop", allowed.join("loop")).unwrap();
        assert_eq!(Sandbox::resolve(&allowed.join("loop/f")), None);
        // Looks like a URL, is a local path.
        assert!(!sandbox.allows(
            std::path::Path::new(&format!("{}/x://../../f", allowed.display())),
            None
        ));
    }
}
