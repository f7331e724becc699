//! The MAT v5 reader (Stanford Dogs' `lists/*.mat`) on untrusted bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = simsiam_trainer::data::mat::parse_mat(data);
});
