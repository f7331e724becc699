//! Image decoding of untrusted bytes, as the server does it: the pixel cap checked from
//! the header, the DCT-scaled path for large JPEGs, then the evaluation transform.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simsiam::decode::{decode_bytes, decode_bytes_min_side};
use simsiam::preprocess::EvalTransform;

fuzz_target!(|data: &[u8]| {
    let max_pixels = Some(1 << 20);
    let t = EvalTransform::for_crop(32);
    if let Ok(img) = decode_bytes(data, max_pixels) {
        assert!(u64::from(img.width()) * u64::from(img.height()) <= 1 << 20);
        assert_eq!(t.to_vec(&img).len(), t.tensor_len());
    }
    if let Ok(img) = decode_bytes_min_side(data, max_pixels, t.resize) {
        assert_eq!(t.to_vec(&img).len(), t.tensor_len());
    }
});
