#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deskport_firewall::conntrack::fuzz_oracle(data));
