//! The conformance suite (`deskport_store::conformance`) against SQLite, on a real file, and
//! against PostgreSQL, on a cluster of the test's own (one database per story).

use deskport_store::{PostgresBackend, SqliteBackend};

deskport_store::conformance_tests!(sqlite, || async {
    let dir = deskport_testsupport::data_dir();
    let backend = SqliteBackend::open(&dir.path().join("deskport.db"))
        .await
        .unwrap();
    (Some(backend), dir)
});

deskport_store::conformance_tests!(postgres, || async {
    let cluster = deskport_testsupport::Postgres::start();
    let url = cluster.as_ref().map(|c| c.database("conformance"));
    let backend = match url {
        Some(url) => Some(PostgresBackend::open(&url).await.unwrap()),
        None => None,
    };
    (backend, cluster)
});
