//! The HTTP server under hostile or careless clients, on SQLite and
//! PostgreSQL (issue 11): reused idempotency keys, integers a double cannot
//! hold, NUL characters, idle and half-sent connections, too many
//! connections, event-stream quotas and revoked tokens, the admission limit,
//! timeouts, and 500s that never carry a database's text.

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/gov.rs"]
mod gov;

use std::time::Duration;

use api_server::{Api, body, deploy, start, start_with};
use futures::StreamExt;
use mandate_api::ApiConfig;
use mandate_tests::{Backend, backend_tests};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn fast() -> ApiConfig {
    ApiConfig {
        rate_per_second: 100_000,
        rate_burst: 100_000,
        ..Default::default()
    }
}

/// POSTs raw JSON text (to send numbers serde_json would not write).
async fn post_raw(api: &Api, path: &str, token: &str, text: &str) -> (StatusCode, Value) {
    body(
        api.req(Method::POST, path, token)
            .header("content-type", "application/json")
            .body(text.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn idempotency_key_reused_with_another_body_is_a_conflict(b: Backend) {
    let api = start(b).await;
    let agent = api.token("agent", api_server::AGENT).await;
    let submit = |v: &'static str| {
        api.req(Method::POST, "/v1/tasks", &agent)
            .header("Idempotency-Key", "pay-7")
            .json(&deploy(v))
            .send()
    };
    let (s, first) = body(submit("v2").await.unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    let (s, again) = body(submit("v2").await.unwrap()).await;
    assert_eq!((s, &again["id"]), (StatusCode::OK, &first["id"]), "{again}");
    let (s, e) = body(submit("v3").await.unwrap()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["code"], "conflict");
    assert_eq!(e["details"]["idempotency_key"], "pay-7");
    assert_eq!(e["details"]["task_id"], first["id"]);
    assert!(e["message"].as_str().unwrap().contains("pay-7"), "{e}");
    assert_eq!(api.task_count().await, 1, "the other body created nothing");
}

async fn integers_beyond_2_pow_53_less_1_are_refused_naming_the_field(b: Backend) {
    let api = start(b).await;
    let ops = api.token("operator", "ops").await;
    for (text, field) in [
        (
            r#"{"workflow":"deploy_with_rollback","input":{"service":"web","version":"v1","amount_cents":18446744073709551616}}"#,
            "input.amount_cents",
        ),
        (
            r#"{"workflow":"deploy_with_rollback","input":{"service":"web","version":"v1","n":9007199254740992}}"#,
            "input.n",
        ),
        (
            r#"{"workflow":"deploy_with_rollback","input":{"service":"web","version":"v1","list":[1, -1e30]}}"#,
            "input.list[1]",
        ),
    ] {
        let (s, e) = post_raw(&api, "/v1/tasks", &ops, text).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{text}: {e}");
        assert_eq!(e["details"]["field"], field, "{e}");
        assert!(e["message"].as_str().unwrap().contains("2^53 − 1"), "{e}");
    }
    let (s, e) = post_raw(
        &api,
        "/v1/tasks/x/signals/go",
        &ops,
        r#"{"payload":{"amount":-18446744073709551615}}"#,
    )
    .await;
    assert_eq!(
        (s, e["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("payload.amount")),
        "{e}"
    );
    assert_eq!(api.task_count().await, 0);
    // 2^53 − 1 and fractions are kept.
    let (s, t) = post_raw(
        &api,
        "/v1/tasks",
        &ops,
        r#"{"workflow":"deploy_with_rollback","input":{"service":"web","version":"v1","n":9007199254740991,"f":0.25}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
}

async fn nul_is_refused_naming_the_parameter_and_500s_hide_the_store(b: Backend) {
    let api = start(b).await;
    let ops = api.token("operator", "ops").await;
    for (method, path, field) in [
        (Method::GET, "/v1/tasks/ab%00c", "id"),
        (Method::GET, "/v1/tasks/%00/history", "id"),
        (Method::POST, "/v1/tasks/x%00/cancel", "id"),
        (Method::POST, "/v1/tasks/x%00/pause", "id"),
        (Method::POST, "/v1/tasks/abc/signals/go%00", "name"),
        (Method::POST, "/v1/approvals/t%00:pay", "id"),
        (Method::GET, "/v1/tasks?agent=a%00b", "agent"),
        (Method::GET, "/v1/tasks?workflow=%00", "workflow"),
        (Method::GET, "/v1/approvals?task=%00", "task"),
        (Method::GET, "/v1/events?task=t%00", "task"),
        (Method::DELETE, "/v1/halt?agent=%00", "agent"),
    ] {
        let (s, e) = body(api.req(method.clone(), path, &ops).send().await.unwrap()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path}: {e}");
        assert_eq!(e["details"]["field"], field, "{method} {path}: {e}");
    }
    for (path, json, field) in [
        (
            "/v1/tasks",
            json!({"workflow": "deploy_with_rollback", "input": {"service": "we\u{0}b", "version": "v1"}}),
            "input.service",
        ),
        ("/v1/halt", json!({"reason": "stop\u{0}"}), "reason"),
        ("/v1/tasks/x/cancel", json!({"reason": "\u{0}"}), "reason"),
    ] {
        let (s, e) = api.post(path, &ops, json).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {e}");
        assert_eq!(e["details"]["field"], field, "{path}: {e}");
    }
    assert_eq!(api.task_count().await, 0);

    // A store failure is a 500 naming the request id, not the database's words.
    mandate_tests::exec_sql(&api.g.h.db, "ALTER TABLE halts RENAME TO halts_gone").await;
    let r = api.req(Method::GET, "/v1/halt", &ops).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let (s, e) = body(r).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{e}");
    assert_eq!(
        e["message"],
        format!("internal error, request id {id}; the details are in the server's log")
    );
    assert_eq!(e["request_id"], id);
    assert!(!e.to_string().contains("halts"), "{e}");
}

/// Reads until the server closes the connection (true) or `within` passes.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a response (e.g. 408) before the close
        }
    }
}

fn addr(api: &Api) -> String {
    api.base.trim_start_matches("http://").to_string()
}

/// One raw HTTP/1.1 request on a new connection; the status and body.
async fn raw_get(api: &Api, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr(api)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("a response within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// One raw HTTP/1.1 request on an open connection that stays open; the
/// status and the response, read to the end of its `content-length` body.
async fn keep_alive_get(s: &mut TcpStream, path: &str) -> (u16, String) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("a content-length header");
            if body.len() >= len {
                let status = text.split(' ').nth(1).and_then(|c| c.parse().ok());
                return (status.unwrap_or(0), text);
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "the connection closed mid-response: {text}");
        out.extend_from_slice(&buf[..n]);
    }
}

async fn idle_and_half_sent_connections_are_closed(b: Backend) {
    let api = start_with(
        b,
        ApiConfig {
            header_timeout: Duration::from_millis(300),
            ..fast()
        },
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(addr(&api)).await.unwrap());
    }
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr(&api)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        idle.push(s);
    }
    // A kept-alive connection that sends nothing after its response.
    let mut kept = TcpStream::connect(addr(&api)).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    idle.push(kept);
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(10)).await,
            "connection {i} is still open 10 s after a 300 ms header timeout"
        );
    }
    assert_eq!(raw_get(&api, "/healthz").await.0, 200);

    // The idle timeout: no byte either way.
    let api = start_with(
        b,
        ApiConfig {
            idle_timeout: Duration::from_millis(300),
            ..fast()
        },
    )
    .await;
    let mut s = TcpStream::connect(addr(&api)).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
}

async fn connections_past_the_limit_get_503(b: Backend) {
    let api = start_with(
        b,
        ApiConfig {
            max_connections: 4,
            ..fast()
        },
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr(&api)).await.unwrap());
    }
    // Within the limit a real request works. It is sent on the last of the
    // four kept-open connections, so no connection closes before the limit is
    // tried (a closing one gives its place back a moment later, and a
    // connection accepted in that moment would take it).
    let (s, text) = keep_alive_get(idle.last_mut().unwrap(), "/healthz").await;
    assert_eq!(s, 200, "{text}");
    // Past it: 503 with the JSON error, at once.
    let (s, text) = raw_get(&api, "/healthz").await;
    assert_eq!(s, 503, "{text}");
    assert!(text.contains("\"code\":\"too_many_connections\""), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    // A closed connection gives its place back.
    drop(idle.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if raw_get(&api, "/healthz").await.0 == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed connection's place was never freed"
        );
        tokio::task::yield_now().await;
    }
}

async fn streams_are_limited_per_token_and_end_when_it_is_revoked(b: Backend) {
    let api = start_with(
        b,
        ApiConfig {
            max_streams_per_token: 2,
            ..fast()
        },
    )
    .await;
    let greedy = api.token("agent", "greedy").await;
    let auditor = api.token("auditor", "audit").await;
    let open = |t: &str| api.req(Method::GET, "/v1/events?from=0", t).send();
    let a = open(&greedy).await.unwrap();
    let b2 = open(&greedy).await.unwrap();
    assert_eq!((a.status(), b2.status()), (StatusCode::OK, StatusCode::OK));
    let r = open(&greedy).await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    let (s, e) = body(r).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{e}");
    assert_eq!(
        (e["code"].as_str(), e["details"]["limit"].as_u64()),
        (Some("stream_quota"), Some(2)),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("--max-streams-per-token")
    );
    let other = open(&auditor).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK, "the quota is per token");

    // Revoking the token ends its open streams within the token cache time.
    let now = api.g.h.engine.now_ms();
    assert!(
        api.g
            .h
            .engine
            .store()
            .revoke_token("greedy", now)
            .await
            .unwrap()
    );
    let mut events = a.bytes_stream();
    let ended = tokio::time::timeout(
        mandate_api::auth::TOKEN_CACHE_TTL + Duration::from_secs(10),
        async {
            while let Some(chunk) = events.next().await {
                if chunk.is_err() {
                    break;
                }
            }
        },
    )
    .await;
    assert!(ended.is_ok(), "a revoked token's stream stayed open");
}

async fn submissions_past_the_admission_limit_get_503(b: Backend) {
    let api = start_with(
        b,
        ApiConfig {
            max_inflight_submissions: 2,
            ..fast()
        },
    )
    .await;
    let ops = api.token("operator", "ops").await;
    // Two submissions in flight (held here) fill the server.
    let held = api
        .state
        .submission_slots()
        .clone()
        .acquire_many_owned(2)
        .await
        .unwrap();
    let r = api
        .req(Method::POST, "/v1/tasks", &ops)
        .json(&deploy("v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    let (s, e) = body(r).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert_eq!(
        (e["code"].as_str(), e["details"]["limit"].as_u64()),
        (Some("overloaded"), Some(2))
    );
    assert_eq!(api.task_count().await, 0, "nothing was queued");
    drop(held);
    let (s, t) = api.post("/v1/tasks", &ops, deploy("v1")).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
}

/// Holds the tasks table locked (SQLite: the write lock; PostgreSQL: an
/// exclusive table lock) until the returned connection is dropped.
async fn lock_tasks(db: &mandate_tests::TestDb) -> Box<dyn std::any::Any + Send> {
    use sqlx::Connection;
    match db.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql("BEGIN EXCLUSIVE")
                .execute(&mut c)
                .await
                .unwrap();
            Box::new(c)
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::raw_sql("BEGIN; LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
                .execute(&mut c)
                .await
                .unwrap();
            Box::new(c)
        }
    }
}

async fn a_timed_out_request_answers_json_503(b: Backend) {
    let api = start_with(
        b,
        ApiConfig {
            request_timeout: Duration::from_millis(300),
            ..fast()
        },
    )
    .await;
    let ops = api.token("operator", "ops").await;
    assert_eq!(api.get("/v1/whoami", &ops).await.0, StatusCode::OK);
    // The store cannot write while the test holds its lock: the submission
    // waits past the timeout (the store itself would wait 10 s).
    let lock = lock_tasks(&api.g.h.db).await;
    let (s, e) = api.post("/v1/tasks", &ops, deploy("v1")).await;
    drop(lock);
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert_eq!(e["code"], "timeout", "{e}");
    assert_eq!(e["details"]["limit_ms"], 300);
    assert!(e["request_id"].is_string(), "{e}");
}

backend_tests!(
    idempotency_key_reused_with_another_body_is_a_conflict,
    integers_beyond_2_pow_53_less_1_are_refused_naming_the_field,
    nul_is_refused_naming_the_parameter_and_500s_hide_the_store,
    idle_and_half_sent_connections_are_closed,
    connections_past_the_limit_get_503,
    streams_are_limited_per_token_and_end_when_it_is_revoked,
    submissions_past_the_admission_limit_get_503,
    a_timed_out_request_answers_json_503,
);
