//! The conformance suite (`deskport_store::conformance`) against SQLite, on a real file.

use deskport_store::SqliteBackend;

deskport_store::conformance_tests!(sqlite, || async {
    let dir = deskport_testsupport::data_dir();
    let backend = SqliteBackend::open(&dir.path().join("deskport.db"))
        .await
        .unwrap();
    (backend, dir)
});
