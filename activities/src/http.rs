//! Remote tools: a catalog entry with an `endpoint` is called over HTTP.
//!
//! One POST of the step's input as JSON, with the call's idempotency key in
//! the `Idempotency-Key` header (the remote side must apply a key at most
//! once), under a timeout and a response size limit. A compensation also
//! sends `X-Mandate-Compensates: <the step's idempotency key>`: the service
//! must fence that key in the same transaction as the undo, and refuse (a
//! non-retryable 4xx such as 409) any later request carrying the fenced key
//! as its `Idempotency-Key`, because that is a late attempt of a step
//! already rolled back (see the `Tool` contract). A 2xx response's JSON
//! body is the output; 408, 425, 429 and 5xx are retryable failures, other
//! statuses are not. Only `http://` is spoken (a plain HTTP/1.1 client on a
//! tokio socket): remote tools are expected behind a local gateway or
//! sidecar, and a TLS stack would double this crate's build time.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::catalog::Endpoint;
use mandate_engine::tool::{Tool, ToolContext, ToolError, ToolKind, ToolResult};

/// A tool served by an HTTP endpoint.
pub struct HttpTool {
    name: String,
    kind: ToolKind,
    recovery_path: Option<String>,
    endpoint: Endpoint,
}

impl HttpTool {
    pub fn new(
        name: String,
        kind: ToolKind,
        recovery_path: Option<String>,
        endpoint: Endpoint,
    ) -> Self {
        Self {
            name,
            kind,
            recovery_path,
            endpoint,
        }
    }
}

struct Url {
    host_port: String,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Url, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    let host = authority.split(':').next().unwrap_or(authority).to_string();
    let host_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(Url {
        host_port,
        host,
        path: path.to_string(),
    })
}

/// Whether a failed status may succeed on another attempt.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || (500..600).contains(&status)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n").ok_or("truncated chunked body")?;
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
}

impl HttpTool {
    async fn post(&self, ctx: &ToolContext, input: &Value) -> ToolResult {
        let name = &self.name;
        let url = parse_url(&self.endpoint.url)
            .map_err(|e| ToolError::non_retryable(format!("{name}: {e}")))?;
        let body = serde_json::to_vec(input)
            .map_err(|e| ToolError::non_retryable(format!("{name}: {e}")))?;
        let mut stream = tokio::net::TcpStream::connect(&url.host_port)
            .await
            .map_err(|e| {
                ToolError::retryable(format!("{name}: cannot connect to {}: {e}", url.host_port))
            })?;
        let compensates = ctx
            .compensates
            .as_deref()
            .map(|step_key| format!("X-Mandate-Compensates: {step_key}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nIdempotency-Key: {}\r\nX-Mandate-Attempt: {}\r\n{compensates}Content-Length: {}\r\nConnection: close\r\n\r\n",
            url.path,
            url.host,
            ctx.idempotency_key,
            ctx.attempt,
            body.len()
        );
        let io = |e: std::io::Error| ToolError::retryable(format!("{name}: {e}"));
        stream.write_all(head.as_bytes()).await.map_err(io)?;
        stream.write_all(&body).await.map_err(io)?;
        let max = self.endpoint.max_response_bytes;
        let mut response = Vec::new();
        (&mut stream)
            .take(max as u64 + 16 * 1024 + 1)
            .read_to_end(&mut response)
            .await
            .map_err(io)?;
        let header_end = find(&response, b"\r\n\r\n").ok_or_else(|| {
            ToolError::retryable(format!("{name}: the response has no complete header"))
        })?;
        let header = String::from_utf8_lossy(&response[..header_end]).to_string();
        let mut body = response[header_end + 4..].to_vec();
        if body.len() > max {
            return Err(ToolError::non_retryable(format!(
                "{name}: response larger than the limit of {max} bytes"
            )));
        }
        let status: u16 = header
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ToolError::retryable(format!("{name}: malformed status line")))?;
        if header.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("transfer-encoding:")
                && l.to_ascii_lowercase().contains("chunked")
        }) {
            body = dechunk(&body).map_err(|e| ToolError::retryable(format!("{name}: {e}")))?;
        }
        if !(200..300).contains(&status) {
            let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            let message = format!("{name}: HTTP {status} from {}: {text}", self.endpoint.url);
            return Err(if retryable_status(status) {
                ToolError::retryable(message)
            } else {
                ToolError::non_retryable(message)
            });
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body)
            .map_err(|e| ToolError::non_retryable(format!("{name}: the response is not JSON: {e}")))
    }
}

impl Tool for HttpTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> ToolKind {
        self.kind
    }
    fn recovery_path(&self) -> Option<&str> {
        self.recovery_path.as_deref()
    }
    fn call<'a>(&'a self, ctx: ToolContext, input: Value) -> BoxFuture<'a, ToolResult> {
        async move {
            let timeout = Duration::from_millis(self.endpoint.timeout_ms.max(1));
            match tokio::time::timeout(timeout, self.post(&ctx, &input)).await {
                Ok(r) => r,
                Err(_) => Err(ToolError::retryable(format!(
                    "{}: no response from {} within {} ms",
                    self.name, self.endpoint.url, self.endpoint.timeout_ms
                ))),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::net::TcpListener;

    async fn serve_once(response: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        (format!("http://{addr}/tool"), handle)
    }

    fn tool(url: String, max: usize) -> HttpTool {
        HttpTool::new(
            "remote.x".into(),
            ToolKind::WriteReversible,
            None,
            Endpoint {
                url,
                timeout_ms: 2_000,
                max_response_bytes: max,
            },
        )
    }

    #[tokio::test]
    async fn posts_json_with_the_idempotency_key_and_maps_statuses() {
        let (url, h) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"ok\":1}").await;
        let out = tool(url, 1024)
            .call(ToolContext::new("t", 4, 1), json!({"a": 1}))
            .await
            .unwrap();
        assert_eq!(out, json!({"ok": 1}));
        let request = h.await.unwrap();
        assert!(request.starts_with("POST /tool HTTP/1.1"), "{request}");
        assert!(request.contains("Idempotency-Key: t:4"), "{request}");
        assert!(!request.contains("X-Mandate-Compensates"), "{request}");
        assert!(request.ends_with("{\"a\":1}"), "{request}");

        let (url, _h) = serve_once("HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n").await;
        let e = tool(url, 1024)
            .call(ToolContext::new("t", 4, 1), json!({}))
            .await
            .unwrap_err();
        assert!(e.retryable, "{e}");
        let (url, _h) = serve_once("HTTP/1.1 400 Bad\r\nContent-Length: 3\r\n\r\nbad").await;
        let e = tool(url, 1024)
            .call(ToolContext::new("t", 4, 1), json!({}))
            .await
            .unwrap_err();
        assert!(!e.retryable && e.message.contains("HTTP 400"), "{e}");
        let (url, _h) =
            serve_once("HTTP/1.1 200 OK\r\n\r\n{\"big\":\"xxxxxxxxxxxxxxxxxxxxxxxxx\"}").await;
        let e = tool(url, 8)
            .call(ToolContext::new("t", 4, 1), json!({}))
            .await
            .unwrap_err();
        assert!(e.message.contains("larger than the limit"), "{e}");
    }

    #[tokio::test]
    async fn a_compensation_sends_the_key_of_the_step_it_undoes() {
        let (url, h) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await;
        tool(url, 1024)
            .call(ToolContext::compensation("t", 9, 1, 4), json!({}))
            .await
            .unwrap();
        let request = h.await.unwrap();
        assert!(request.contains("Idempotency-Key: t:9\r\n"), "{request}");
        assert!(
            request.contains("X-Mandate-Compensates: t:4\r\n"),
            "{request}"
        );
    }
}
