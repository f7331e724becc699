//! The VOC XML reader (Stanford Dogs' `Annotation/` files) on untrusted text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = simsiam_trainer::data::annotation::parse_annotation(text);
    }
});
