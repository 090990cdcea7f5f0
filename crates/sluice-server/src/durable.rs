//! Files the server must not lose or show: written whole or not at all, on disk before
//! the call that wrote them returns, and readable by the server's user only (job files
//! hold the SQL with its passwords).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Replaces `path` with `bytes`: a temporary file beside it (mode 0600), synced, renamed
/// over it, and the directory synced so that the rename survives a crash too.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // A leftover temporary file keeps its old mode: set it.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes `dir` and its missing parents; those it makes are the server user's only.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("1.json");
        std::fs::write(d.path().join("1.json.tmp"), "leftover").unwrap();
        std::fs::set_permissions(
            d.path().join("1.json.tmp"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        write_file(&p, b"{\"a\": 1}").unwrap();
        write_file(&p, b"{\"a\": 2}").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\": 2}");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!d.path().join("1.json.tmp").exists());
    }
}
