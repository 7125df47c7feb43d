#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deskport_rdp::fixup::fuzz_oracle(data));
