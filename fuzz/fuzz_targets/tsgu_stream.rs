#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deskport_gateway::fuzz_oracle(data));
