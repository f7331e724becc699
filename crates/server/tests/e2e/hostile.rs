//! Images given as URLs (`inputs.fetch_urls`), fetched from an image host on a loopback
//! port that misbehaves on purpose: every trick is answered with its documented 4xx,
//! never a 500, and nothing panics in the server (its log is checked when it stops).

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

/// The misbehaving image host; returns its port. One thread per connection, so a body
/// that never ends does not hold up the others.
fn hostile_host(jpeg: Vec<u8>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let bomb = std::sync::Arc::new(gzip_bomb());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (jpeg, bomb) = (jpeg.clone(), bomb.clone());
            std::thread::spawn(move || serve(stream, &jpeg, &bomb, port));
        }
    });
    port
}

/// 16 MB of zeros, gzipped to about 16 kB: must never be inflated.
fn gzip_bomb() -> Vec<u8> {
    use flate2::write::GzEncoder;
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..16 {
        gz.write_all(&zeros).expect("gzip");
    }
    gz.finish().expect("gzip")
}

fn serve(stream: TcpStream, jpeg: &[u8], bomb: &[u8], port: u16) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
            break;
        }
    }
    let mut out = stream;
    let head = |status: &str, headers: &str, len: usize| {
        format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    let redirect = |to: &str| head("302 Found", &format!("Location: {to}\r\n"), 0);
    let _ = match path.as_str() {
        "/dog.jpg" => out
            .write_all(head("200 OK", "Content-Type: image/jpeg\r\n", jpeg.len()).as_bytes())
            .and_then(|_| out.write_all(jpeg)),
        "/relative" => out.write_all(redirect("/dog.jpg").as_bytes()),
        "/loop" => out.write_all(redirect("/loop").as_bytes()),
        "/no-location" => out.write_all(head("302 Found", "", 0).as_bytes()),
        "/empty-location" => out.write_all(redirect("").as_bytes()),
        "/to-file" => out.write_all(redirect("file:///etc/passwd").as_bytes()),
        "/to-data" => out.write_all(redirect("data:image/png;base64,iVBORw0KGgo=").as_bytes()),
        "/to-localhost" => {
            out.write_all(redirect(&format!("http://localhost:{port}/dog.jpg")).as_bytes())
        }
        "/to-metadata" => {
            out.write_all(redirect("http://169.254.169.254/latest/meta-data/").as_bytes())
        }
        "/to-userinfo" => {
            out.write_all(redirect(&format!("http://127.0.0.1:{port}@169.254.169.254/")).as_bytes())
        }
        // Claims a gigabyte.
        "/big" => out.write_all(head("200 OK", "", 1_000_000_000).as_bytes()),
        // Claims less than it sends: the image is cut at the claimed length.
        "/short-claim" => out
            .write_all(head("200 OK", "", 100).as_bytes())
            .and_then(|_| out.write_all(jpeg)),
        // Claims more than it sends, then closes.
        "/long-claim" => out
            .write_all(head("200 OK", "", jpeg.len() * 4).as_bytes())
            .and_then(|_| out.write_all(jpeg)),
        // A chunked body that never ends.
        "/endless" => {
            let chunk = [b'x'; 65536];
            let mut r = out.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            );
            while r.is_ok() {
                r = out
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .and_then(|_| out.write_all(&chunk))
                    .and_then(|_| out.write_all(b"\r\n"));
            }
            r
        }
        // A byte every 200 ms: never done within the fetch timeout.
        "/trickle" => {
            let mut r = out.write_all(head("200 OK", "", jpeg.len()).as_bytes());
            for b in jpeg {
                if r.is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
                r = out.write_all(&[*b]);
            }
            r
        }
        "/gzip-bomb" => out
            .write_all(
                head(
                    "200 OK",
                    "Content-Encoding: gzip\r\nContent-Type: image/jpeg\r\n",
                    bomb.len(),
                )
                .as_bytes(),
            )
            .and_then(|_| out.write_all(bomb)),
        _ => out.write_all(head("404 Not Found", "", 0).as_bytes()),
    };
}

fn embed_url(s: &Server, url: &str) -> Response {
    s.json("POST", "/v1/embed", &json!({ "images": [url] }))
}

#[test]
fn images_given_as_urls_are_fetched_only_when_allowed() {
    let jpeg = image_bytes("class_2/3.jpg");
    let port = hostile_host(jpeg.clone());
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let dir = tempfile::tempdir().expect("tmp");

    // Off by default.
    let mut off = Server::start(&dir.path().join("g1"), &[]);
    let r = embed_url(&off, &url("/dog.jpg"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("fetching images is off"), "{}", r.text());
    off.stop();

    // On, for hosts that are loopback addresses under other names, which the address
    // rules refuse: decimal and IPv6-mapped forms of 127.0.0.1, and localhost.
    let on = [
        ("SIMSIAM_SERVER_INPUTS__FETCH_URLS", "true"),
        (
            "SIMSIAM_SERVER_INPUTS__ALLOWED_HOSTS",
            "127.0.0.1,localhost,::ffff:127.0.0.1",
        ),
    ];
    let mut s = Server::start(&dir.path().join("g2"), &on);
    for u in [
        url("/dog.jpg"),
        format!("http://2130706433:{port}/dog.jpg"),
        format!("http://[::ffff:127.0.0.1]:{port}/dog.jpg"),
        format!("http://localhost:{port}/dog.jpg"),
    ] {
        let r = embed_url(&s, &u);
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (400, "bad_request"),
            "{u}: {}",
            r.text()
        );
        assert!(
            r.text().contains("loopback, private or link-local"),
            "{u}: {}",
            r.text()
        );
    }
    s.stop();

    // Loopback allowed (as for an internal image store), on 127.0.0.1 only.
    let open = [
        ("SIMSIAM_SERVER_INPUTS__FETCH_URLS", "true"),
        ("SIMSIAM_SERVER_INPUTS__ALLOWED_HOSTS", "127.0.0.1"),
        ("SIMSIAM_SERVER_INPUTS__ALLOW_PRIVATE_ADDRESSES", "true"),
        ("SIMSIAM_SERVER_INPUTS__FETCH_TIMEOUT_S", "3"),
        ("SIMSIAM_SERVER_LIMITS__MAX_BODY_BYTES", "4000000"),
    ];
    let mut s = Server::start(&dir.path().join("g3"), &open);
    let sent = vectors(&s.raw("/v1/embed", &jpeg));
    for path in ["/dog.jpg", "/relative"] {
        assert_eq!(
            vectors(&embed_url(&s, &url(path))),
            sent,
            "{path}: the image"
        );
    }
    let r = s.json(
        "POST",
        "/v1/embeddings",
        &json!({"model": "default", "input": url("/dog.jpg")}),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let started = Instant::now();
    for (u, status, code, says) in [
        (
            url("/loop"),
            400,
            "bad_redirect",
            "more than 5 redirects".to_string(),
        ),
        (
            url("/no-location"),
            400,
            "bad_redirect",
            "302 without a Location".into(),
        ),
        (
            url("/empty-location"),
            400,
            "bad_redirect",
            "302 without a Location".into(),
        ),
        (
            url("/to-file"),
            400,
            "bad_redirect",
            "scheme \"file\" is not fetched".into(),
        ),
        (
            url("/to-data"),
            400,
            "bad_redirect",
            "scheme \"data\" is not fetched".into(),
        ),
        (
            url("/to-localhost"),
            400,
            "bad_redirect",
            "host localhost is not in inputs.allowed_hosts".into(),
        ),
        (
            url("/to-metadata"),
            400,
            "bad_redirect",
            "host 169.254.169.254 is not in inputs.allowed_hosts".into(),
        ),
        (
            url("/to-userinfo"),
            400,
            "bad_redirect",
            "host 169.254.169.254 is not in inputs.allowed_hosts".into(),
        ),
        (
            format!("http://127.0.0.1:{port}@169.254.169.254/latest/meta-data/"),
            400,
            "bad_request",
            "host 169.254.169.254 is not in inputs.allowed_hosts".into(),
        ),
        (
            url("/big"),
            413,
            "too_large",
            "larger than 4000000 bytes".into(),
        ),
        (
            url("/endless"),
            413,
            "too_large",
            "larger than 4000000 bytes".into(),
        ),
        (url("/trickle"), 400, "bad_request", "cannot fetch".into()),
        (url("/short-claim"), 400, "bad_image", "image 0".into()),
        (
            url("/long-claim"),
            400,
            "bad_request",
            "reading the body".into(),
        ),
        (url("/gzip-bomb"), 400, "bad_image", "image 0".into()),
        (
            url("/missing"),
            400,
            "bad_request",
            "the server answered 404".into(),
        ),
    ] {
        let r = embed_url(&s, &u);
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (status, code),
            "{u}: {}",
            r.text()
        );
        let message = r.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(&says), "{u}: {message}");
    }
    // The trickle is cut at the fetch timeout, not after its whole body (8 s and more).
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let log = s.stop();
    assert!(!log.contains("panicked"), "{log}");
}
