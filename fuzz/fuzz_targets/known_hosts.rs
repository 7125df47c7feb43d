#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deskport_tls::known_hosts::fuzz_oracle(data));
