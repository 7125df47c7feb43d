use std::path::PathBuf;

/// A fresh, empty temporary directory, removed when the returned guard drops.
///
/// Set `DESKPORT_KEEP_TEST_DIRS=1` to keep them for a post-mortem (the path is printed).
pub fn data_dir() -> tempfile::TempDir {
    let keep = std::env::var_os("DESKPORT_KEEP_TEST_DIRS").is_some();
    let dir = tempfile::Builder::new()
        .prefix("deskport-test-")
        .disable_cleanup(keep)
        .tempdir()
        .expect("create a temporary data directory");
    if keep {
        eprintln!("keeping test data dir {}", dir.path().display());
    }
    dir
}

/// A directory for files a human should look at after the run (screenshots, logs): under
/// `$DESKPORT_TEST_ARTIFACTS`, else `test-artifacts/` at the workspace root. It is created
/// if missing and is *not* removed.
pub fn artifact_dir(test_name: &str) -> PathBuf {
    let root = std::env::var_os("DESKPORT_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join("test-artifacts")
        });
    let dir = root.join(test_name);
    std::fs::create_dir_all(&dir).expect("create the test artifact directory");
    dir
}
