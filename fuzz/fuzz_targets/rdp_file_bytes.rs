#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deskport_client::rdpfile::fuzz_oracle_bytes(data));
