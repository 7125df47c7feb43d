//! The fuzz targets' corpora and crash reproducers (`fuzz/corpus/<target>/`,
//! `fuzz/artifacts/<target>/`) replayed through the same oracles the fuzzer runs, plus a
//! bounded random smoke run of each oracle, so that every CI run exercises them on stable.

use std::path::PathBuf;

type Oracle = fn(&[u8]);

const TARGETS: &[(&str, Oracle)] = &[
    ("fixup_frames", deskport_rdp::fixup::fuzz_oracle),
    ("conntrack_list", deskport_firewall::conntrack::fuzz_oracle),
    ("policy_document", deskport_api::policy_doc::fuzz_oracle),
    ("tsgu_stream", deskport_gateway::fuzz_oracle),
    ("rdp_negotiation", deskport_rdp::connection::fuzz_oracle),
    (
        "rdp_after_tls",
        deskport_rdp::connection::fuzz_oracle_after_tls,
    ),
    ("screen_codecs", deskport_rdp::encode::fuzz_oracle),
    ("zgfx_stream", deskport_rdp::encode::zgfx_fuzz_oracle),
    ("console_messages", deskport_client::browser::fuzz_oracle),
    ("rdp_file", deskport_client::rdpfile::fuzz_oracle),
    (
        "rdp_file_bytes",
        deskport_client::rdpfile::fuzz_oracle_bytes,
    ),
    ("known_hosts", deskport_tls::known_hosts::fuzz_oracle),
    ("credssp", deskport_rdp::credssp::fuzz_oracle),
    ("channels", deskport_rdp::channels::fuzz_oracle),
];

/// Every target in `fuzz/fuzz_targets` is replayed here.
#[test]
fn every_fuzz_target_is_replayed() {
    for entry in std::fs::read_dir(fuzz_dir().join("fuzz_targets")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "the fuzz target {name} is not in TARGETS"
        );
    }
}

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn every_corpus_file_and_crash_input_passes_its_oracle() {
    for (target, oracle) in TARGETS {
        let mut replayed = 0;
        for kind in ["corpus", "artifacts"] {
            let dir = fuzz_dir().join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| oracle(&data)).is_err() {
                    panic!("{} fails its oracle", path.display());
                }
                replayed += 1;
            }
        }
        assert!(replayed > 0, "the corpus of {target} is empty");
    }
}

#[test]
fn oracles_hold_on_random_and_mutated_inputs() {
    let mut seed = 0x0123_4567_89ab_cdef_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (target, oracle) in TARGETS {
        let corpus: Vec<Vec<u8>> = std::fs::read_dir(fuzz_dir().join("corpus").join(target))
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        for i in 0..3000 {
            let mut data = if i % 2 == 0 {
                corpus[(next() as usize) % corpus.len()].clone()
            } else {
                (0..(next() % 300) as usize).map(|_| next() as u8).collect()
            };
            // Flip, insert or cut a few bytes.
            for _ in 0..(next() % 4) {
                if data.is_empty() {
                    break;
                }
                let at = (next() as usize) % data.len();
                match next() % 3 {
                    0 => data[at] ^= next() as u8,
                    1 => data.insert(at, next() as u8),
                    _ => data.truncate(at),
                }
            }
            oracle(&data);
        }
    }
}
