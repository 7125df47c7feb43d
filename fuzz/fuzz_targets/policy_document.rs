#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| deskport_api::policy_doc::fuzz_oracle(data));
