#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fff_fuzz::weights(data));
