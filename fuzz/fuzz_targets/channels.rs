#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deskport_rdp::channels::fuzz_oracle(data));
