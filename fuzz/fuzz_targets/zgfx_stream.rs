#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deskport_rdp::encode::zgfx_fuzz_oracle(data));
