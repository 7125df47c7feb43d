//! The shared configuration loader: precedence, locations and errors.

use crate::support::{deskport, run};

fn format_of(stdout: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(stdout).unwrap();
    v["log"]["format"].as_str().unwrap().to_owned()
}

#[test]
fn precedence_is_defaults_then_file_then_environment_then_flags() {
    let home = deskport_testsupport::data_dir();
    let file = home.path().join("c.toml");
    let show = ["config", "show", "--json"];

    let r = run(deskport(home.path()).args(show));
    assert_eq!(
        (r.code, format_of(&r.stdout)),
        (0, "text".into()),
        "{}",
        r.stderr
    );

    std::fs::write(&file, "[log]\nformat = \"json\"\nfilter = \"debug\"\n").unwrap();
    let r = run(deskport(home.path()).arg("--config").arg(&file).args(show));
    assert_eq!(format_of(&r.stdout), "json", "{}", r.stderr);

    let r = run(deskport(home.path())
        .arg("--config")
        .arg(&file)
        .env("DESKPORT_LOG__FORMAT", "text")
        .args(show));
    assert_eq!(format_of(&r.stdout), "text", "{}", r.stderr);
    // The file's other key is still in force.
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["log"]["filter"], "debug");

    let r = run(deskport(home.path())
        .arg("--config")
        .arg(&file)
        .env("DESKPORT_LOG__FORMAT", "text")
        .args(["--log-format", "json"])
        .args(show));
    assert_eq!(format_of(&r.stdout), "json", "{}", r.stderr);
}

#[test]
fn config_file_is_found_through_env_then_xdg_default() {
    let home = deskport_testsupport::data_dir();
    let r = run(deskport(home.path()).args(["config", "path"]));
    let default = home.path().join(".config/deskport/config.toml");
    assert_eq!(r.stdout, format!("{}\tabsent\n", default.display()));

    std::fs::create_dir_all(default.parent().unwrap()).unwrap();
    std::fs::write(&default, "[log]\nformat = \"json\"\n").unwrap();
    let r = run(deskport(home.path()).args(["config", "show", "--json"]));
    assert_eq!(format_of(&r.stdout), "json");

    let other = home.path().join("other.toml");
    std::fs::write(&other, "[log]\nformat = \"text\"\n").unwrap();
    let r = run(deskport(home.path())
        .env("DESKPORT_CONFIG", &other)
        .args(["config", "show", "--json"]));
    assert_eq!(format_of(&r.stdout), "text");
}

#[test]
fn bad_configuration_is_a_usage_error_naming_the_key_and_source() {
    let home = deskport_testsupport::data_dir();
    let file = home.path().join("c.toml");
    let cases: &[(&str, &str)] = &[
        ("[log]\nformt = \"json\"\n", "formt"),
        ("[lgo]\n", "lgo"),
        ("[log]\nformat = \"xml\"\n", "xml"),
        ("[log\n", "TOML"),
        ("[rdp_server]\nsession_x_server = \"weston\"\n", "weston"),
    ];
    for (text, needle) in cases {
        std::fs::write(&file, text).unwrap();
        let r = run(deskport(home.path())
            .arg("--config")
            .arg(&file)
            .args(["config", "show"]));
        assert_eq!(r.code, 2, "{text:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{text:?}: {}", r.stderr);
        assert!(r.stderr.contains("c.toml"), "{text:?}: {}", r.stderr);
        assert!(r.stdout.is_empty());
    }

    let r = run(deskport(home.path())
        .env("DESKPORT_LOG__FORMAT", "xml")
        .args(["config", "show"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("DESKPORT_"), "{}", r.stderr);

    let r = run(deskport(home.path()).args([
        "--config",
        "/nonexistent/deskport.toml",
        "config",
        "path",
    ]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);

    let r = run(deskport(home.path())
        .env("RUST_LOG", "info,[[[")
        .args(["config", "path"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("RUST_LOG"), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2_and_help_and_version_exit_0() {
    let home = deskport_testsupport::data_dir();
    assert_eq!(run(deskport(home.path()).arg("no-such-command")).code, 2);
    assert_eq!(
        run(deskport(home.path()).args(["config", "show", "--bogus"])).code,
        2
    );
    let r = run(deskport(home.path()).arg("--help"));
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("DESKPORT_<SECTION>__<KEY>"));
    let r = run(deskport(home.path()).arg("--version"));
    assert_eq!(
        r.stdout,
        format!("deskport {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn host_ports_outside_nft_host_placement_is_a_usage_error() {
    let home = deskport_testsupport::data_dir();
    let policy = home.path().join("policy.toml");
    std::fs::write(&policy, "").unwrap();
    for (env, needle) in [
        (
            ("DESKPORT_FIREWALL__HOST_PORTS", "[3389]"),
            "host_ports is for",
        ),
        (("DESKPORT_FIREWALL__HOST_PORTS", "[0]"), "host_ports"),
    ] {
        let r = run(deskport(home.path())
            .env(env.0, env.1)
            .env("DESKPORT_FIREWALL__BACKEND", "nft")
            .env(
                "DESKPORT_FIREWALL__PLACEMENT",
                if env.1 == "[0]" { "host" } else { "forward" },
            )
            .arg("firewall")
            .arg("--policy")
            .arg(&policy)
            .arg("--dry-run"));
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains(needle), "{}", r.stderr);
    }
}

/// The new settings' bad values (RD Gateway, listener and RDP per-source limits) are refused
/// with the key named, before anything starts.
#[test]
fn rd_gateway_and_limit_settings_are_checked() {
    let home = deskport_testsupport::data_dir();
    let r = run(deskport(home.path()).arg("rd-gateway"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("needs --manager"), "{}", r.stderr);
    let r = run(deskport(home.path()).args(["rd-gateway", "--manager", "http://127.0.0.1:1"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("needs --token"), "{}", r.stderr);
    let r = run(deskport(home.path()).args([
        "rd-gateway",
        "--manager",
        "https://127.0.0.1:1",
        "--token",
        "t",
    ]));
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("cannot check the certificate"),
        "{}",
        r.stderr
    );
    let r = run(deskport(home.path())
        .env("DESKPORT_RD_GATEWAY__MAX_TUNNELS", "0")
        .args([
            "rd-gateway",
            "--manager",
            "http://127.0.0.1:1",
            "--token",
            "t",
        ]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("max_tunnels is 0"), "{}", r.stderr);
    for (key, value, needle) in [
        (
            "DESKPORT_MANAGER__HEADER_TIMEOUT_SECS",
            "0",
            "header_timeout_secs is 0",
        ),
        (
            "DESKPORT_MANAGER__MAX_CONNECTIONS_PER_SOURCE",
            "0",
            "max_connections_per_source is 0",
        ),
        (
            "DESKPORT_MANAGER__RD_GATEWAY_MAX_TUNNELS",
            "0",
            "rd_gateway_max_tunnels is 0",
        ),
    ] {
        let r = run(deskport(home.path())
            .env(key, value)
            .args(["manager", "--data-dir"])
            .arg(home.path().join("m")));
        assert_ne!(r.code, 0, "{key}");
        assert!(r.stderr.contains(needle), "{key}: {}", r.stderr);
    }
    for (key, value, needle) in [
        (
            "DESKPORT_RDP_SERVER__MAX_HANDSHAKES_PER_SOURCE",
            "64",
            "max_handshakes_per_source is 64",
        ),
        (
            "DESKPORT_RDP_SERVER__MAX_NEW_CONNECTIONS_PER_SOURCE_PER_SEC",
            "0",
            "max_new_connections_per_source_per_sec is 0",
        ),
        (
            "DESKPORT_RDP_SERVER__METRICS_LISTEN",
            "port-9100",
            "invalid socket address syntax for key \"RDP_SERVER.METRICS_LISTEN\"",
        ),
        (
            "DESKPORT_RDP_SERVER__LOGON_TIMEOUT_SECS",
            "0",
            "logon_timeout_secs is 0",
        ),
        (
            "DESKPORT_RDP_SERVER__SESSION_PAM_SERVICE",
            "../shadow",
            "session_pam_service is \"../shadow\"",
        ),
        (
            "DESKPORT_RDP_SERVER__SOUND_CODEC",
            "mp3",
            "unknown variant: found `mp3`, expected ``auto` or `pcm``",
        ),
    ] {
        let r = run(deskport(home.path())
            .env(key, value)
            .args(["rdp-server", "--display", ":99", "--data-dir"])
            .arg(home.path().join("r")));
        assert_eq!(r.code, 2, "{key}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{key}: {}", r.stderr);
    }
}
