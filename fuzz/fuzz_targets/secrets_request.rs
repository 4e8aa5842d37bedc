//! The secrets server's request classification and `Authorization`
//! parsing on arbitrary methods, paths and headers: never a panic, and a
//! secret is only ever addressed by a plain `GET /v1/secrets/{kind}/{name}`.
#![no_main]

use habitus::secrets::server::{classify, credentials, Credentials, Route};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Uri};
use libfuzzer_sys::fuzz_target;

/// A plain segment: what a secret's kind or name may be.
fn plain(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment.bytes().all(|b| b.is_ascii_graphic() && !b"/%\\".contains(&b))
}

fn check(method: &Method, path: &str, headers: &HeaderMap) {
    if let Route::Secret(key) = classify(method, path, headers) {
        assert_eq!(method, Method::GET);
        assert!(plain(key.kind.name()) && plain(&key.name), "{key:?}");
        assert_eq!(path, format!("/v1/secrets/{}/{}", key.kind, key.name));
    }
}

// Input: method, request target and header lines, separated by newlines;
// header lines are `name: value`.
fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let method = lines.next().unwrap_or_default();
    let target = lines.next().unwrap_or_default();
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    // As hyper hands it over, and as any string.
    if let Ok(uri) = Uri::try_from(target) {
        check(&method, uri.path(), &headers);
    }
    check(&method, &String::from_utf8_lossy(target), &headers);

    for value in headers.get_all(hyper::header::AUTHORIZATION) {
        let raw = value.as_bytes();
        match credentials(Some(raw)) {
            Credentials::None => {}
            Credentials::Bearer(token) => {
                assert!(raw[..7].eq_ignore_ascii_case(b"bearer "));
                assert_eq!(token, token.trim_ascii());
            }
            Credentials::Basic { user, .. } => {
                assert!(raw[..6].eq_ignore_ascii_case(b"basic "));
                assert!(!user.contains(&b':'));
            }
        }
    }
});
