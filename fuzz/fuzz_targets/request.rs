//! Request parsing of untrusted bodies: multipart forms, JSON with base64 images, raw
//! bodies, query strings. The first byte picks the content type, the bytes up to the
//! first newline are the query string, the rest is the body.
#![no_main]

use actix_web::test::TestRequest;
use actix_web::FromRequest;
use libfuzzer_sys::fuzz_target;
use simsiam_server::config::LimitsConfig;
use simsiam_server::input;
use std::sync::OnceLock;

const TYPES: [&str; 6] = [
    "multipart/form-data; boundary=X",
    "application/json",
    "image/jpeg",
    "application/octet-stream",
    "text/plain",
    "multipart/form-data",
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let (query, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&b""[..], rest),
    };
    let query = String::from_utf8_lossy(query).replace(['#', ' '], "");
    // A URI no HTTP parser would accept never reaches a handler (and makes the test
    // request builder panic, which the first run of this target found).
    let uri = format!("/v1/embed?{query}");
    if actix_web::http::Uri::try_from(uri.as_str()).is_err() {
        return;
    }
    let limits = LimitsConfig {
        max_body_bytes: 1 << 16,
        max_images: 8,
        ..Default::default()
    };
    let (req, mut payload) = TestRequest::post()
        .uri(&uri)
        .insert_header(("content-type", TYPES[kind as usize % TYPES.len()]))
        .set_payload(body.to_vec())
        .to_http_parts();
    runtime().block_on(async {
        let Ok(payload) = actix_web::web::Payload::from_request(&req, &mut payload).await else {
            return;
        };
        if let Ok(input) = input::read(&req, payload, &limits, None).await {
            assert!(input.images.len() <= limits.max_images);
            assert!(input.images.iter().map(Vec::len).sum::<usize>() <= limits.max_body_bytes);
        }
    });
});
