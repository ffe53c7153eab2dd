//! One signed AWS call: SigV4 over an HTTPS request, retried with exponential backoff when AWS says
//! to try again (throttling, 5xx, a dropped connection) and turned into an error naming the service's
//! own code and message otherwise.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use crate::credentials::{self, Environment};

const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const USER_AGENT: &str = concat!("lectern/", env!("CARGO_PKG_VERSION"));

/// An AWS account in one region, or a stand-in for one at `endpoint` (moto, LocalStack).
pub struct Aws {
    pub region: String,
    identity: Identity,
    endpoint: Option<String>,
    agent: ureq::Agent,
}

/// An AWS service as lectern signs and addresses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Ebs,
    Ec2,
    Ssm,
}

impl Service {
    fn signing_name(self) -> &'static str {
        match self {
            Service::Ebs => "ebs",
            Service::Ec2 => "ec2",
            Service::Ssm => "ssm",
        }
    }
}

pub struct Request<'a> {
    pub service: Service,
    pub method: &'static str,
    /// Path and query, starting with `/`.
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: &'a [u8],
    /// The body's SHA-256 in hex when the caller has it already (a snapshot block's checksum).
    pub body_sha256: Option<String>,
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("the response is not JSON")
    }
}

impl Aws {
    /// Credentials and region from the standard chain; `endpoint` (or `AWS_ENDPOINT_URL`) replaces
    /// every service's AWS address.
    pub fn from_environment(region: Option<&str>, endpoint: Option<&str>) -> Result<Self> {
        let env = credentials::ProcessEnvironment;
        Ok(Self::new(
            credentials::region(region, &env)?,
            credentials::credentials(&env)?,
            endpoint
                .map(str::to_owned)
                .or_else(|| env.var("AWS_ENDPOINT_URL")),
        ))
    }

    pub fn new(region: String, credentials: Credentials, endpoint: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(USER_AGENT)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .new_agent();
        Aws {
            region,
            identity: credentials.into(),
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_owned()),
            agent,
        }
    }

    fn base_url(&self, service: Service) -> String {
        match &self.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => format!(
                "https://{}.{}.amazonaws.com",
                service.signing_name(),
                self.region
            ),
        }
    }

    /// Sends `request`, retrying what AWS asks to retry; an error for any other non-2xx answer.
    pub fn call(&self, request: &Request) -> Result<Response> {
        let url = format!("{}{}", self.base_url(request.service), request.path);
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let outcome = self.send_once(&url, request);
            let retry = match &outcome {
                Ok(response) if (200..300).contains(&response.status) => return outcome,
                Ok(response) => retryable(response),
                Err(_) => true,
            };
            if !retry || attempt == ATTEMPTS {
                return match outcome {
                    Ok(response) => Err(service_error(request, &response)),
                    Err(e) => Err(e.context(format!(
                        "{} {} failed after {attempt} attempts",
                        request.method, url
                    ))),
                };
            }
            tracing::debug!(%url, attempt, "retrying an AWS call");
            std::thread::sleep(backoff + jitter(backoff));
            backoff *= 2;
        }
        unreachable!("the last attempt returns")
    }

    fn send_once(&self, url: &str, request: &Request) -> Result<Response> {
        let body_hash;
        let body = match &request.body_sha256 {
            Some(hash) => {
                body_hash = hash.clone();
                SignableBody::Precomputed(body_hash)
            }
            None => SignableBody::Bytes(request.body),
        };
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(request.service.signing_name())
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .context("cannot set up request signing")?
            .into();
        let signable = SignableRequest::new(
            request.method,
            url,
            request.headers.iter().map(|(n, v)| (*n, v.as_str())),
            body,
        )
        .context("cannot sign the request")?;
        let (instructions, _) = sign(signable, &params)
            .context("cannot sign the request")?
            .into_parts();
        let mut http = ureq::http::Request::builder()
            .method(request.method)
            .uri(url);
        for (name, value) in &request.headers {
            http = http.header(*name, value);
        }
        for (name, value) in instructions.headers() {
            http = http.header(name, value);
        }
        let http = http
            .body(request.body.to_vec())
            .context("cannot build the request")?;
        let mut response = self
            .agent
            .run(http)
            .map_err(|e| anyhow!("{} {url}: {e}", request.method))?;
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .map_err(|e| anyhow!("{} {url}: reading the answer: {e}", request.method))?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Throttling and server-side errors are worth another try; a refused request is not.
fn retryable(response: &Response) -> bool {
    if response.status >= 500 || response.status == 429 {
        return true;
    }
    let body = String::from_utf8_lossy(&response.body);
    [
        "Throttling",
        "RequestLimitExceeded",
        "ThrottledException",
        "RequestTimeout",
    ]
    .iter()
    .any(|code| body.contains(code))
}

/// "EC2 RegisterImage: 400 InvalidAMIName.Duplicate: …": the service's code and message, whichever
/// protocol (JSON or XML) it answered in.
fn service_error(request: &Request, response: &Response) -> anyhow::Error {
    let body = String::from_utf8_lossy(&response.body);
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .map(|json| {
            let code = json["__type"]
                .as_str()
                .or(json["code"].as_str())
                .unwrap_or_default();
            let message = json["message"]
                .as_str()
                .or(json["Message"].as_str())
                .unwrap_or_default();
            format!("{code}: {message}")
        })
        .or_else(|| {
            let doc = roxmltree::Document::parse(&body).ok()?;
            let text = |tag: &str| {
                doc.descendants()
                    .find(|n| n.has_tag_name(tag))
                    .and_then(|n| n.text())
                    .map(str::to_owned)
            };
            Some(format!(
                "{}: {}",
                text("Code")?,
                text("Message").unwrap_or_default()
            ))
        })
        .unwrap_or_else(|| body.chars().take(300).collect());
    anyhow!(
        "{:?} {} {}: HTTP {} {detail}",
        request.service,
        request.method,
        request.path.split('?').next().unwrap_or_default(),
        response.status
    )
}

/// Up to a quarter of `backoff`, from the clock, so that parallel workers do not retry in step.
fn jitter(backoff: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    backoff / 4 * (nanos % 1000) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn aws_says_what_to_retry() {
        assert!(retryable(&response(503, "")));
        assert!(retryable(&response(
            400,
            "<Code>RequestLimitExceeded</Code>"
        )));
        assert!(!retryable(&response(
            400,
            "<Code>InvalidAMIName.Duplicate</Code>"
        )));
        assert!(!retryable(&response(
            403,
            r#"{"__type":"AccessDeniedException"}"#
        )));
    }

    #[test]
    fn errors_name_the_service_code_and_message() {
        let request = Request {
            service: Service::Ec2,
            method: "POST",
            path: "/?secret=no".to_owned(),
            headers: vec![],
            body: b"",
            body_sha256: None,
        };
        let xml = "<Response><Errors><Error><Code>InvalidSnapshot.NotFound</Code><Message>snap-1 does not exist</Message></Error></Errors></Response>";
        let err = service_error(&request, &response(400, xml)).to_string();
        assert_eq!(
            err,
            "Ec2 POST /: HTTP 400 InvalidSnapshot.NotFound: snap-1 does not exist"
        );
        let json = r#"{"__type":"ValidationException","message":"bad block"}"#;
        let err = service_error(&request, &response(400, json)).to_string();
        assert!(err.ends_with("ValidationException: bad block"), "{err}");
    }
}
