//! Every answer the tests receive is checked against the server's own OpenAPI document
//! (generated from the code, fetched once from `GET /openapi.json`): its status must be one
//! the operation lists, its Content-Type the documented one, and a JSON body must validate
//! against the documented schema for that route and status, errors included. Answers for
//! paths or methods the document does not have (actix's 404 and 405) must be the `Error`
//! schema.

use serde_json::{json, Value};
use simsiam_bench::client::{request, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// `client::request`, with the answer checked against the document.
pub fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let r = request(addr, method, path, headers, body)?;
    check(addr, method, path, &r);
    Ok(r)
}

fn document(addr: &str) -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let r = request(addr, "GET", "/openapi.json", &[], &[]).expect("GET /openapi.json");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    })
}

/// The documented operation for a concrete request path (`/v1/gallery/a/b` is
/// `/v1/gallery/{id}`: ids may hold slashes).
fn operation<'d>(doc: &'d Value, method: &str, path: &str) -> Option<(&'d str, &'d Value)> {
    let path = path.split('?').next().unwrap_or(path);
    let (template, ops) =
        doc["paths"]
            .as_object()?
            .iter()
            .find(|(t, _)| match t.split_once('{') {
                Some((prefix, _)) => path.len() > prefix.len() && path.starts_with(prefix),
                None => t.as_str() == path,
            })?;
    Some((template.as_str(), ops.get(method.to_ascii_lowercase())?))
}

/// Panics with the route, status and the schema's complaint when `r` is not what the
/// document says.
pub fn check(addr: &str, method: &str, path: &str, r: &Response) {
    let doc = document(addr);
    let content_type = r.header("content-type").unwrap_or("").to_string();
    let Some((template, op)) = operation(doc, method, path) else {
        assert!(
            matches!(r.status, 404 | 405),
            "{method} {path} is not in the document, yet answered {}",
            r.status
        );
        validate(
            doc,
            &json!({"$ref": "#/components/schemas/Error"}),
            method,
            path,
            r,
        );
        return;
    };
    let Some(documented) = op["responses"].get(r.status.to_string()) else {
        panic!(
            "{method} {template} answered {}, a status the document does not list: {}",
            r.status,
            r.text()
        );
    };
    let Some(content) = documented["content"].as_object() else {
        return;
    };
    let (media, body) = content
        .iter()
        .find(|(media, _)| content_type.starts_with(media.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "{method} {template} {}: Content-Type {content_type:?}, documented {:?}",
                r.status,
                content.keys().collect::<Vec<_>>()
            )
        });
    if media == "application/json" {
        validate(doc, &body["schema"], method, template, r);
    }
}

fn validate(doc: &Value, schema: &Value, method: &str, route: &str, r: &Response) {
    let validator = validator(doc, schema);
    let body = r.json();
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {route} {} does not match the document:\n{}\nbody: {}",
        r.status,
        errors.join("\n"),
        r.text()
    );
}

/// The validator of `schema` (whose `$ref`s point into the document's components),
/// compiled once: the load tests' clients check every answer, and compiling per answer
/// would take the CPU the server under test needs.
fn validator(doc: &Value, schema: &Value) -> Arc<jsonschema::Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let key = schema.to_string();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(v) = cache.get(&key) {
        return v.clone();
    }
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [schema],
        "components": doc["components"],
    });
    let v = Arc::new(
        jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("the schema {key}: {e}")),
    );
    cache.insert(key, v.clone());
    v
}

/// The check is not a formality: a real answer passes, and each way of breaking it fails.
#[test]
fn the_document_check_refuses_answers_that_differ_from_the_document() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = super::Server::start(&dir.path().join("gallery"), &[]);
    let r = s.raw("/v1/embed", &super::image_bytes("class_0/0.jpg"));
    assert_eq!(r.status, 200, "{}", r.text());
    let refused = |status: u16, body: Value, why: &str| {
        let changed = Response {
            status,
            headers: r.headers.clone(),
            body: body.to_string().into_bytes(),
        };
        let outcome = std::panic::catch_unwind(|| check(&s.addr, "POST", "/v1/embed", &changed));
        assert!(outcome.is_err(), "the check let through {why}");
    };
    let mut wrong_type = r.json();
    wrong_type["dim"] = json!("512");
    refused(200, wrong_type, "a string where the document says integer");
    let mut missing = r.json();
    missing
        .as_object_mut()
        .expect("object")
        .remove("embeddings");
    refused(200, missing, "a missing required field");
    refused(418, r.json(), "a status the route does not list");
    let error = json!({"error": {"code": "bad_image", "message": "m"}});
    refused(400, error, "an error without `type` and `param`");
    check(&s.addr, "POST", "/v1/embed", &r);
}
