//! AWS stand-ins for the tests: moto's server on loopback, and a proxy in front of it that fails
//! chosen requests the way a flaky network or an overloaded service does.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use lectern_cloud::Aws;

pub const REGION: &str = "eu-west-1";

/// moto's server on a free loopback port, stopped on drop.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    /// `None` (the test skips) when moto is not installed, unless LECTERN_REQUIRE_MOTO=1 says it must be.
    pub fn start() -> Option<Moto> {
        Self::start_on("127.0.0.1")
    }

    /// moto listening on `host` (an address of this network namespace).
    pub fn start_on(host: &str) -> Option<Moto> {
        let program = std::env::var("LECTERN_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = match Command::new(&program)
            .args(["-H", host, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                assert!(
                    std::env::var("LECTERN_REQUIRE_MOTO").as_deref() != Ok("1"),
                    "LECTERN_REQUIRE_MOTO=1 but {program} does not start: {e}"
                );
                eprintln!(
                    "skipping: {program} does not start ({e}); scripts/install-deps.sh installs it"
                );
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect((host, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not listen on {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Moto {
            child,
            url: format!("http://{host}:{port}"),
        })
    }

    pub fn aws(&self) -> Aws {
        aws_at(&self.url)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An IAM instance profile, which moto's RunInstances insists on (lectern itself never creates IAM
/// resources, so its client has no IAM calls): one form POST to the moto at `url`, which routes it by the
/// credential scope's service.
pub fn create_instance_profile(url: &str, name: &str) {
    let body =
        format!("Action=CreateInstanceProfile&Version=2010-05-08&InstanceProfileName={name}");
    let address = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("moto listens");
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=AKIDLECTERNTEST/20260101/us-east-1/iam/aws4_request, \
         SignedHeaders=host, Signature=0\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "CreateInstanceProfile: {answer}"
    );
}

pub fn aws_at(url: &str) -> Aws {
    Aws::new(
        REGION.to_owned(),
        Credentials::new("AKIDLECTERNTEST", "lectern-test-secret", None, None, "test"),
        Some(url.to_owned()),
    )
}

/// A request as the proxy saw it.
pub struct Seen<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The body as text (lossy): enough to tell EC2's form-encoded actions apart.
    pub body: &'a str,
}

/// What the proxy does with a request: pass it on, or answer with this status instead.
pub type Fault = dyn Fn(&Seen) -> Option<u16> + Send + Sync;

/// Forwards every request to `upstream` unless `fault` answers it; stops on drop.
pub struct FaultyProxy {
    pub url: String,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl FaultyProxy {
    pub fn start(upstream: &str, fault: Box<Fault>) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        let port = listener.local_addr().unwrap().port();
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let fault: Arc<Fault> = fault.into();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (upstream, fault) = (upstream.clone(), fault.clone());
                std::thread::spawn(move || {
                    let _ = relay(client, &upstream, &*fault);
                });
            }
        });
        FaultyProxy {
            url: format!("http://127.0.0.1:{port}"),
            stop,
            port,
        }
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One request per connection: read it whole, answer it or forward it with `Connection: close`.
fn relay(mut client: TcpStream, upstream: &str, fault: &Fault) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let header_end = loop {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..header_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while request.len() < header_end + length {
        let n = client.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let mut first = head.lines().next().unwrap_or_default().split(' ');
    let body = String::from_utf8_lossy(&request[header_end..]);
    let seen = Seen {
        method: first.next().unwrap_or_default(),
        path: first.next().unwrap_or_default(),
        body: &body,
    };
    if let Some(status) = fault(&seen) {
        let body = format!("{{\"__type\":\"InjectedFault\",\"message\":\"status {status}\"}}");
        write!(
            client,
            "HTTP/1.1 {status} Injected\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return client.shutdown(Shutdown::Both);
    }
    let mut server = TcpStream::connect(upstream)?;
    let head = head.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    server.write_all(head.as_bytes())?;
    server.write_all(&request[header_end..])?;
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    client.write_all(&response)?;
    client.shutdown(Shutdown::Both)
}

/// EC2's instance metadata service as IMDSv2 serves it: a session token from `PUT /latest/api/token`,
/// required on every other request (a request without it gets 401 and is counted), the instance's
/// user-data and its role's temporary credentials.
pub struct FakeImds {
    pub url: String,
    pub tokenless: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeImds {
    pub const TOKEN: &'static str = "imds-session-token-5d1c";
    pub const PROFILE: &'static str = "lectern-encoder";

    pub fn start(user_data: String) -> FakeImds {
        Self::start_on("127.0.0.1:0", user_data)
    }

    /// Listening on `address`, e.g. `169.254.169.254:80` where instances look for it.
    pub fn start_on(address: &str, user_data: String) -> FakeImds {
        let listener = TcpListener::bind(address).expect("an IMDS port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let tokenless = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = tokenless.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = Self::answer(stream, &user_data, &counter);
            }
        });
        FakeImds { url, tokenless }
    }

    fn answer(
        mut stream: TcpStream,
        user_data: &str,
        tokenless: &std::sync::atomic::AtomicUsize,
    ) -> std::io::Result<()> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte)? == 1 {
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut first = head.lines().next().unwrap_or_default().split(' ');
        let (method, path) = (
            first.next().unwrap_or_default(),
            first.next().unwrap_or_default(),
        );
        let has_token = head.lines().any(|l| {
            l.to_ascii_lowercase() == format!("x-aws-ec2-metadata-token: {}", Self::TOKEN)
        });
        let credentials = r#"{"Code":"Success","AccessKeyId":"ASIALECTERNTEST","SecretAccessKey":"imds-secret","Token":"imds-session","Expiration":"2099-01-01T00:00:00Z"}"#;
        let (status, body) = match (method, path) {
            ("PUT", "/latest/api/token") => (200, Self::TOKEN.to_owned()),
            _ if !has_token => {
                tokenless.fetch_add(1, Ordering::Relaxed);
                (401, String::new())
            }
            ("GET", "/latest/user-data") => (200, user_data.to_owned()),
            ("GET", "/latest/meta-data/iam/security-credentials/") => {
                (200, Self::PROFILE.to_owned())
            }
            ("GET", p)
                if p == format!(
                    "/latest/meta-data/iam/security-credentials/{}",
                    Self::PROFILE
                ) =>
            {
                (200, credentials.to_owned())
            }
            _ => (404, String::new()),
        };
        write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }
}
