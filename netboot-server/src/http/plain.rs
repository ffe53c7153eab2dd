//! The LAN's HTTP/1.1 server: what firmware, iPXE and the initramfs fetch (scripts, kernels,
//! initrds, host layers, root images).
//!
//! Requests go to the axum router like any other. A response that carries a [`FileBody`] is
//! sent with sendfile(2): a root image goes from the page cache to the socket without a copy
//! through user space, and a connection holds no buffer for it, however many pull at once. That
//! is why this port is not served by hyper, which can only send bytes it was handed. Nothing on
//! this port takes a request body, so requests with one are refused.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version, header,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tower::ServiceExt;

use super::Limits;
use super::file::FileBody;
use crate::metrics::{HTTP_CONNECTIONS_CUT, Metrics};

/// A request line and headers; more is refused (431).
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// A body we read and drop rather than refuse: some clients send a few bytes with a GET.
const MAX_IGNORED_BODY: u64 = 4 * 1024;
/// The largest non-file response body (an iPXE script, an error, a health check).
const MAX_BODY: usize = 16 << 20;
/// Bytes asked of one sendfile(2) call; the socket's free buffer is what it sends at most anyway.
const SENDFILE_MAX: usize = 8 << 20;

/// Why a connection ends before the client ends it.
#[derive(Debug)]
enum Cut {
    /// No complete request head within the header timeout.
    HeaderTimeout,
    /// No byte moved within the idle timeout.
    Idle,
    /// Answered with this status, then closed: the request cannot be framed or is too big.
    Refused(StatusCode),
    /// The peer went away, or the socket failed.
    Gone,
}

/// Serves requests on `stream` until the client closes it, asks to, or a limit ends it.
pub(super) async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    metrics: &Metrics,
    limits: Limits,
) {
    // Responses are written whole (a head, or a head and a small body, then the file): waiting
    // to fill segments would only delay the last one of each.
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::with_capacity(4096);
    loop {
        let deadline = Instant::now() + limits.header_read_timeout;
        let result = match read_request(&mut stream, &mut buffer, deadline).await {
            Ok(Some(request)) => respond(&mut stream, peer, &app, request, limits).await,
            Ok(None) => return,
            Err(cut) => Err(cut),
        };
        match result {
            Ok(true) => {}
            Ok(false) => {
                let _ = stream.shutdown().await;
                return;
            }
            Err(Cut::HeaderTimeout) => {
                metrics.inc(HTTP_CONNECTIONS_CUT, &[("reason", "header_timeout")]);
                return;
            }
            Err(Cut::Idle) => {
                metrics.inc(HTTP_CONNECTIONS_CUT, &[("reason", "idle_timeout")]);
                tracing::debug!(%peer, "closed an idle HTTP connection");
                return;
            }
            Err(Cut::Refused(status)) => {
                let head =
                    response_head(status, &HeaderMap::new(), Some(0), Version::HTTP_11, false);
                let _ = write_all(&mut stream, &head, limits.idle_timeout).await;
                let _ = stream.shutdown().await;
                return;
            }
            Err(Cut::Gone) => return,
        }
    }
}

/// The next request's head (its body, if any, read and dropped), or `None` when the client
/// closed the connection between requests.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Option<Parts>, Cut> {
    let (parts, head_len) = loop {
        if let Some(parsed) = parse_head(buffer)? {
            break parsed;
        }
        if buffer.len() >= MAX_HEAD {
            return Err(Cut::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        }
        match timeout_at(deadline, stream.read_buf(buffer)).await {
            Err(_) => return Err(Cut::HeaderTimeout),
            Ok(Ok(0)) if buffer.is_empty() => return Ok(None),
            Ok(Ok(0) | Err(_)) => return Err(Cut::Gone),
            Ok(Ok(_)) => {}
        }
    };
    buffer.drain(..head_len);
    let mut body_left = body_length(&parts.headers)?;
    let buffered = body_left.min(buffer.len() as u64);
    buffer.drain(..buffered as usize);
    body_left -= buffered;
    let mut discard = [0u8; 1024];
    while body_left > 0 {
        let want = discard.len().min(body_left as usize);
        match timeout_at(deadline, stream.read(&mut discard[..want])).await {
            Err(_) => return Err(Cut::HeaderTimeout),
            Ok(Ok(0) | Err(_)) => return Err(Cut::Gone),
            Ok(Ok(read)) => body_left -= read as u64,
        }
    }
    Ok(Some(parts))
}

/// A complete request head at the start of `buffer` and its length, `None` if more must come.
fn parse_head(buffer: &[u8]) -> Result<Option<(Parts, usize)>, Cut> {
    let bad = || Cut::Refused(StatusCode::BAD_REQUEST);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let len = match head.parse(buffer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Cut::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        }
        Err(_) => return Err(bad()),
    };
    let mut request = Request::builder()
        .method(Method::from_bytes(head.method.unwrap_or_default().as_bytes()).map_err(|_| bad())?)
        .uri(head.path.unwrap_or_default())
        .version(match head.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        });
    for field in head.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| bad())?;
        request = request.header(name, value);
    }
    let (parts, ()) = request.body(()).map_err(|_| bad())?.into_parts();
    Ok(Some((parts, len)))
}

/// The request body's length: refused unless it is small and framed by Content-Length.
fn body_length(headers: &HeaderMap) -> Result<u64, Cut> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(Cut::Refused(StatusCode::BAD_REQUEST));
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let length = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some(value), None) => value
            .to_str()
            .ok()
            .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
            .and_then(|text| text.parse().ok())
            .ok_or(Cut::Refused(StatusCode::BAD_REQUEST))?,
        (Some(_), Some(_)) => return Err(Cut::Refused(StatusCode::BAD_REQUEST)),
    };
    if length > MAX_IGNORED_BODY {
        return Err(Cut::Refused(StatusCode::PAYLOAD_TOO_LARGE));
    }
    Ok(length)
}

/// Whether the client keeps the connection open after this request (RFC 9112 §9.3).
fn keeps_alive(parts: &Parts) -> bool {
    let asked = |token: &str| {
        parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|option| option.trim().eq_ignore_ascii_case(token))
    };
    match parts.version {
        Version::HTTP_10 => asked("keep-alive"),
        _ => !asked("close"),
    }
}

/// Answers one request; `Ok(true)` when the connection stays open for another.
async fn respond(
    stream: &mut TcpStream,
    peer: SocketAddr,
    app: &axum::Router,
    parts: Parts,
    limits: Limits,
) -> Result<bool, Cut> {
    let keep_alive = keeps_alive(&parts);
    let version = parts.version;
    let head_only = parts.method == Method::HEAD;
    let mut request = Request::from_parts(parts, Body::empty());
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = match app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (mut parts, body) = response.into_parts();
    let file = parts.extensions.remove::<FileBody>();
    let bodiless = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let content = if file.is_some() || head_only || bodiless {
        Bytes::new()
    } else {
        axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|error| {
                tracing::warn!(%peer, %error, "could not produce a response body");
                Cut::Gone
            })?
    };
    let length = match &file {
        _ if bodiless => None,
        Some(file) => Some(file.len()),
        // axum left the GET's length on a HEAD response when it knew it.
        None if head_only => None,
        None => Some(content.len() as u64),
    };
    let mut head = response_head(parts.status, &parts.headers, length, version, keep_alive);
    match file {
        Some(file) if !head_only => {
            write_all(stream, &head, limits.idle_timeout).await?;
            send_file(stream, &file, limits.idle_timeout).await?;
        }
        _ => {
            head.extend_from_slice(&content);
            write_all(stream, &head, limits.idle_timeout).await?;
        }
    }
    Ok(keep_alive)
}

/// The status line and headers, with our framing: Content-Length (when given; a HEAD response
/// keeps the one the handler set), Date and Connection.
fn response_head(
    status: StatusCode,
    headers: &HeaderMap,
    length: Option<u64>,
    version: Version,
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    )
    .into_bytes();
    for (name, value) in headers {
        let ours = [header::CONNECTION, header::TRANSFER_ENCODING, header::DATE];
        if ours.contains(name) || (length.is_some() && name == header::CONTENT_LENGTH) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(length) = length {
        head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
    }
    let date = httpdate::fmt_http_date(SystemTime::now());
    head.extend_from_slice(format!("date: {date}\r\n").as_bytes());
    if !keep_alive {
        head.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        head.extend_from_slice(b"connection: keep-alive\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Writes `bytes`, cutting the connection when none move for `idle`.
async fn write_all(stream: &mut TcpStream, mut bytes: &[u8], idle: Duration) -> Result<(), Cut> {
    while !bytes.is_empty() {
        match timeout(idle, stream.write(bytes)).await {
            Err(_) => return Err(Cut::Idle),
            Ok(Ok(0) | Err(_)) => return Err(Cut::Gone),
            Ok(Ok(written)) => bytes = &bytes[written..],
        }
    }
    Ok(())
}

/// Sends the file's range with sendfile(2), cutting the connection when no byte moves for
/// `idle`. A page not yet in the page cache is read from disk within the call, on this
/// thread: the store is local, and what a boot storm pulls is the same few files.
async fn send_file(stream: &TcpStream, file: &FileBody, idle: Duration) -> Result<(), Cut> {
    let mut offset = libc::off_t::try_from(file.range.start).map_err(|_| Cut::Gone)?;
    let end = file.range.end;
    let (socket, source) = (stream.as_raw_fd(), file.file.as_raw_fd());
    while (offset as u64) < end {
        let count = usize::try_from(end - offset as u64)
            .unwrap_or(usize::MAX)
            .min(SENDFILE_MAX);
        match timeout(idle, stream.writable()).await {
            Err(_) => return Err(Cut::Idle),
            Ok(Err(_)) => return Err(Cut::Gone),
            Ok(Ok(())) => {}
        }
        let sent = stream.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors stay open for the call (the stream and the file are
            // borrowed), and `offset` is a valid off_t that sendfile advances.
            let sent = unsafe { libc::sendfile(socket, source, &mut offset, count) };
            usize::try_from(sent).map_err(|_| io::Error::last_os_error())
        });
        match sent {
            Ok(0) => {
                // The file is shorter than when its length was promised: nothing can keep the
                // promise, so the client must see the connection end.
                tracing::warn!("a served file shrank while it was sent");
                return Err(Cut::Gone);
            }
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Err(Cut::Gone),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(request: &str) -> Result<Option<(Parts, usize)>, Cut> {
        parse_head(request.as_bytes())
    }

    #[test]
    fn heads_are_parsed_whole_or_asked_for_more() {
        let (parts, len) = parsed("GET /a/x HTTP/1.0\r\nHost: s\r\n\r\nGET /next")
            .unwrap()
            .unwrap();
        assert_eq!(len, "GET /a/x HTTP/1.0\r\nHost: s\r\n\r\n".len());
        assert_eq!(
            (&parts.method, parts.uri.path(), parts.version),
            (&Method::GET, "/a/x", Version::HTTP_10)
        );
        assert!(!keeps_alive(&parts), "HTTP/1.0 closes unless asked");
        assert!(matches!(parsed("GET /a/x HTTP/1.1\r\nHost:"), Ok(None)));
        assert!(matches!(
            parsed("GET /a/x HTTP/9.9\r\n\r\n"),
            Err(Cut::Refused(StatusCode::BAD_REQUEST))
        ));
        assert!(matches!(
            parsed("\u{1}GET / HTTP/1.1\r\n\r\n"),
            Err(Cut::Refused(StatusCode::BAD_REQUEST))
        ));
        let many: String = (0..=MAX_HEADERS)
            .map(|index| format!("x-{index}: y\r\n"))
            .collect();
        assert!(matches!(
            parsed(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(Cut::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
        ));
        let (parts, _) = parsed("GET / HTTP/1.1\r\nConnection: Upgrade, Close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!keeps_alive(&parts));
        let (parts, _) = parsed("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(keeps_alive(&parts));
    }

    #[test]
    fn only_small_bodies_framed_by_content_length_pass() {
        let length = |request: &str| body_length(&parsed(request).unwrap().unwrap().0.headers);
        assert!(matches!(length("GET / HTTP/1.1\r\n\r\n"), Ok(0)));
        assert!(matches!(
            length("GET / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(12)
        ));
        for refused in [
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        ] {
            assert!(
                matches!(length(refused), Err(Cut::Refused(StatusCode::BAD_REQUEST))),
                "{refused}"
            );
        }
        assert!(matches!(
            length("GET / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n"),
            Err(Cut::Refused(StatusCode::PAYLOAD_TOO_LARGE))
        ));
    }

    #[test]
    fn heads_frame_the_body_themselves() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::ETAG, HeaderValue::from_static("\"e\""));
        let head = String::from_utf8(response_head(
            StatusCode::OK,
            &headers,
            Some(5),
            Version::HTTP_11,
            false,
        ))
        .unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("etag: \"e\"\r\ncontent-length: 5\r\n"),
            "{head}"
        );
        assert!(head.ends_with("connection: close\r\n\r\n"), "{head}");
        assert!(!head.contains("99") && !head.contains("upgrade"), "{head}");
        let kept = String::from_utf8(response_head(
            StatusCode::OK,
            &headers,
            None,
            Version::HTTP_10,
            true,
        ))
        .unwrap();
        assert!(
            kept.contains("content-length: 99\r\n")
                && kept.ends_with("connection: keep-alive\r\n\r\n"),
            "{kept}"
        );
    }
}
