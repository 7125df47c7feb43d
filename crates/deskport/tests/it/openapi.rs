//! The OpenAPI document against the real API: schemathesis (from PyPI; `scripts/install-deps`
//! puts it in `target/tools/venv`) generates requests from the document, sends them to a real
//! manager and checks every answer against it: documented status codes, response schemas,
//! content types, no server errors, and that requests violating the schema are refused.
//!
//! One check is left out: `positive_data_acceptance` expects every schema-valid request to
//! succeed, but the API validates more than a schema can say (a string that matches the
//! address pattern is not always an address; a CIDR must be a real prefix).

use std::path::PathBuf;
use std::process::Command;

use crate::cli_manager::Manager;

fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("DESKPORT_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/venv/bin/st");
    assert!(
        path.exists(),
        "schemathesis is not installed at {}; scripts/install-deps installs it",
        path.display()
    );
    path
}

#[test]
fn real_responses_conform_to_the_openapi_document() {
    let st = schemathesis();
    let dir = deskport_testsupport::data_dir();
    let m = Manager::start(dir.path());
    m.login();
    let config = std::fs::read_to_string(m.home.join(".config/deskport/config.toml")).unwrap();
    let token = config
        .lines()
        .find_map(|l| l.strip_prefix("token = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let output = Command::new(st)
        .args(["run", &format!("{}/api/v1/openapi.json", m.url)])
        .args(["--url", &format!("{}/api/v1", m.url)])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args([
            "--max-examples",
            "5",
            "--generation-deterministic",
            "--workers",
            "1",
        ])
        // The agents' long poll waits up to 60 s by design.
        .args(["--request-timeout", "70", "--max-response-time", "65"])
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    let artifact = deskport_testsupport::artifact_dir("openapi").join("schemathesis.txt");
    std::fs::write(&artifact, report.as_bytes()).unwrap();
    assert!(
        output.status.success(),
        "schemathesis found problems (report in {}):\n{}\n{}",
        artifact.display(),
        report
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains("Tested: 3"),
        "every operation was tested: {report}"
    );
}
