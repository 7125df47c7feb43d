#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deskport_rdp::connection::fuzz_oracle_after_tls(data));
