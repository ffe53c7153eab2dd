//! A file as an HTTP response: revalidation by ETag or Last-Modified, one byte range, HEAD.
//!
//! The body is not read here. The response carries the open file and the bytes to send
//! ([`FileBody`]), and the plain server ([`super::plain`]) sends them with sendfile(2), from the
//! page cache to the socket without a copy through user space. The file is opened once, so the
//! headers and the bytes describe the same file even if it is replaced meanwhile.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The bytes of an open file a response sends, in a response's extensions.
#[derive(Clone, Debug)]
pub(crate) struct FileBody {
    pub file: Arc<File>,
    pub range: Range<u64>,
}

impl FileBody {
    pub fn len(&self) -> u64 {
        self.range.end - self.range.start
    }
}

/// What a `Range` header asks of a file of `len` bytes (RFC 9110 §14).
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

/// One `bytes` range; several (rare, and a multipart body) or a malformed header get the whole
/// file, which RFC 9110 allows a server to send instead.
fn wanted(range: Option<&HeaderValue>, len: u64) -> Wanted {
    let Some(spec) = range
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().strip_prefix("bytes="))
    else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let number = |text: &str| -> Option<u64> {
        let text = text.trim();
        (!text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    let part = match (number(first), number(last)) {
        // The last N bytes.
        (None, Some(suffix)) if first.trim().is_empty() => {
            if suffix == 0 || len == 0 {
                return Wanted::Unsatisfiable;
            }
            len.saturating_sub(suffix)..len
        }
        (Some(start), None) if last.trim().is_empty() => start..len,
        (Some(start), Some(end)) if start <= end => start..len.min(end.saturating_add(1)),
        _ => return Wanted::Whole,
    };
    if part.start >= len {
        Wanted::Unsatisfiable
    } else {
        Wanted::Part(part)
    }
}

/// RFC 9110 §13.1.2: weak comparison, `*` matches anything.
pub(super) fn none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.to_str().unwrap_or_default();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|candidate| {
            let candidate = candidate.trim();
            candidate == "*" || candidate.trim_start_matches("W/") == ours
        })
}

/// Whether the copy the client holds (If-Modified-Since) is as new as the file: only asked when
/// it sent no If-None-Match (RFC 9110 §13.1.3).
fn not_modified_since(headers: &HeaderMap, modified: Option<SystemTime>) -> bool {
    let since = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| httpdate::parse_http_date(value).ok());
    // HTTP dates have whole seconds.
    let seconds = |time: SystemTime| time.duration_since(UNIX_EPOCH).map(|since| since.as_secs());
    match (since, modified) {
        (Some(since), Some(modified)) => seconds(modified).ok() <= seconds(since).ok(),
        _ => false,
    }
}

/// An If-Range that no longer describes the file turns a range request into a whole one.
fn range_still_applies(
    headers: &HeaderMap,
    etag: Option<&HeaderValue>,
    modified: Option<&str>,
) -> bool {
    match headers.get(header::IF_RANGE) {
        None => true,
        Some(condition) => {
            Some(condition) == etag
                || modified.is_some_and(|date| condition.to_str().is_ok_and(|text| text == date))
        }
    }
}

/// The response for `path`: 200, 206, 304, 404 or 416, with `cache_control` and `etag` on what
/// succeeds.
pub(super) fn respond(
    headers: &HeaderMap,
    path: &Path,
    cache_control: &'static str,
    etag: Option<HeaderValue>,
) -> Response {
    let opened = File::open(path).and_then(|file| Ok((file.metadata()?, file)));
    let (metadata, file) = match opened {
        Ok((metadata, file)) if metadata.is_file() => (metadata, file),
        Ok(_) => return StatusCode::NOT_FOUND.into_response(),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return StatusCode::NOT_FOUND.into_response();
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot serve a file");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let len = metadata.len();
    let modified = metadata.modified().ok();
    let last_modified = modified.map(httpdate::fmt_http_date);
    let mut response = Response::default();
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if let Some(etag) = &etag {
        response_headers.insert(header::ETAG, etag.clone());
    }
    if let Some(value) = last_modified
        .as_deref()
        .and_then(|date| HeaderValue::from_str(date).ok())
    {
        response_headers.insert(header::LAST_MODIFIED, value);
    }
    let revalidated = match &etag {
        Some(etag) if headers.contains_key(header::IF_NONE_MATCH) => none_match(headers, etag),
        _ => not_modified_since(headers, modified),
    };
    if revalidated {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    let response_headers = response.headers_mut();
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let wanted = if range_still_applies(headers, etag.as_ref(), last_modified.as_deref()) {
        wanted(headers.get(header::RANGE), len)
    } else {
        Wanted::Whole
    };
    let range = match wanted {
        Wanted::Whole => 0..len,
        Wanted::Part(range) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let content_range = format!("bytes {}-{}/{len}", range.start, range.end - 1);
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&content_range).expect("digits and a dash"),
            );
            range
        }
        Wanted::Unsatisfiable => {
            let mut refused = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            refused.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("digits"),
            );
            return refused;
        }
    };
    response.extensions_mut().insert(FileBody {
        file: Arc::new(file),
        range,
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(range: &str, len: u64) -> Wanted {
        wanted(Some(&HeaderValue::from_str(range).unwrap()), len)
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(asked("bytes=0-99", 1000), Wanted::Part(0..100));
        assert_eq!(asked("bytes=900-", 1000), Wanted::Part(900..1000));
        assert_eq!(asked("bytes=-100", 1000), Wanted::Part(900..1000));
        assert_eq!(asked("bytes=-5000", 1000), Wanted::Part(0..1000));
        assert_eq!(asked("bytes=990-5000", 1000), Wanted::Part(990..1000));
        assert_eq!(asked("bytes=1000-", 1000), Wanted::Unsatisfiable);
        assert_eq!(asked("bytes=-0", 1000), Wanted::Unsatisfiable);
        assert_eq!(asked("bytes=0-", 0), Wanted::Unsatisfiable);
        // Malformed, reversed, several or not bytes: the whole file.
        for whole in [
            "bytes=5-1",
            "bytes=a-b",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=--1",
            "bytes=+1-2",
        ] {
            assert_eq!(asked(whole, 1000), Wanted::Whole, "{whole}");
        }
        assert_eq!(wanted(None, 1000), Wanted::Whole);
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists() {
        let etag = HeaderValue::from_static("\"abc\"");
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            none_match(&headers, &etag)
        };
        assert!(with("\"abc\""));
        assert!(with("W/\"abc\""));
        assert!(with("\"x\", \"abc\""));
        assert!(with("*"));
        assert!(!with("\"abd\""));
        assert!(!none_match(&HeaderMap::new(), &etag));
    }

    #[test]
    fn a_file_is_revalidated_ranged_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernel");
        std::fs::write(&path, vec![7u8; 1000]).unwrap();
        let etag = HeaderValue::from_static("\"k\"");
        let ask = |pairs: &[(header::HeaderName, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(name.clone(), HeaderValue::from_str(value).unwrap());
            }
            respond(&headers, &path, "no-store", Some(etag.clone()))
        };
        let body = |response: &Response| {
            response
                .extensions()
                .get::<FileBody>()
                .unwrap()
                .range
                .clone()
        };

        let whole = ask(&[]);
        assert_eq!(whole.status(), StatusCode::OK);
        assert_eq!(body(&whole), 0..1000);
        let last_modified = whole.headers()[header::LAST_MODIFIED]
            .to_str()
            .unwrap()
            .to_owned();

        let part = ask(&[(header::RANGE, "bytes=10-19")]);
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(body(&part), 10..20);
        assert_eq!(part.headers()[header::CONTENT_RANGE], "bytes 10-19/1000");

        let stale_range = ask(&[
            (header::RANGE, "bytes=10-19"),
            (header::IF_RANGE, "\"old\""),
        ]);
        assert_eq!(
            (stale_range.status(), body(&stale_range)),
            (StatusCode::OK, 0..1000)
        );
        let fresh_range = ask(&[
            (header::RANGE, "bytes=10-19"),
            (header::IF_RANGE, &last_modified),
        ]);
        assert_eq!(fresh_range.status(), StatusCode::PARTIAL_CONTENT);

        let beyond = ask(&[(header::RANGE, "bytes=1000-")]);
        assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(beyond.headers()[header::CONTENT_RANGE], "bytes */1000");

        assert_eq!(
            ask(&[(header::IF_NONE_MATCH, "\"k\"")]).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            ask(&[(header::IF_NONE_MATCH, "\"j\"")]).status(),
            StatusCode::OK
        );
        assert_eq!(
            ask(&[(header::IF_MODIFIED_SINCE, &last_modified)]).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            ask(&[(header::IF_MODIFIED_SINCE, "Mon, 01 Jan 2001 00:00:00 GMT")]).status(),
            StatusCode::OK
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            ask(&[
                (header::IF_NONE_MATCH, "\"j\""),
                (header::IF_MODIFIED_SINCE, &last_modified)
            ])
            .status(),
            StatusCode::OK
        );

        let missing = respond(
            &HeaderMap::new(),
            &dir.path().join("nothing"),
            "no-store",
            None,
        );
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let directory = respond(&HeaderMap::new(), dir.path(), "no-store", None);
        assert_eq!(directory.status(), StatusCode::NOT_FOUND);
    }
}
