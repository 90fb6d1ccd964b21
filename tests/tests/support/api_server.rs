//! The HTTP API served on a free loopback port over a governed engine with a
//! worker, for the API suites (`api.rs`, `api_limits.rs`).

#![allow(dead_code)]

use std::time::Duration;

use mandate_api::{ApiConfig, AppState};
use mandate_tests::Backend;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

use crate::gov;

pub const AGENT: &str = "agent-deployer-7";

/// A governed engine with a worker, and the API served on a free port.
pub struct Api {
    pub g: gov::GovHarness,
    /// The served state (its limits can be held by a test).
    pub state: AppState,
    pub base: String,
    pub http: reqwest::Client,
    pub _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn start(b: Backend) -> Api {
    start_with(
        b,
        ApiConfig {
            rate_per_second: 100_000,
            rate_burst: 100_000,
            ..Default::default()
        },
    )
    .await
}

pub async fn start_with(b: Backend, config: ApiConfig) -> Api {
    let g = gov::harness(b).await;
    let state = AppState::new(g.h.engine.clone(), g.governance.clone(), config);
    start_state(g, state).await
}

/// Serves `state` (made over `g`'s engine) on a free port.
pub async fn start_state(g: gov::GovHarness, state: AppState) -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mandate_api::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Api {
        g,
        state,
        base,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap(),
        _stop: stop,
    }
}

impl Api {
    pub async fn token(&self, role: &str, name: &str) -> String {
        mandate_api::create_token(self.g.h.engine.store().as_ref(), role, name, 0)
            .await
            .unwrap()
            .1
    }

    pub fn req(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        body(self.req(Method::GET, path, token).send().await.unwrap()).await
    }

    pub async fn post(&self, path: &str, token: &str, json: Value) -> (StatusCode, Value) {
        body(
            self.req(Method::POST, path, token)
                .json(&json)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Polls the task over HTTP until its status is one of `want` (30 s).
    pub async fn wait_status(&self, id: &str, token: &str, want: &[&str]) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut updates = self.g.h.engine.subscribe();
        loop {
            let (s, t) = self.get(&format!("/v1/tasks/{id}"), token).await;
            assert_eq!(s, StatusCode::OK, "{t}");
            if want.contains(&t["status"].as_str().unwrap()) {
                return t;
            }
            if tokio::time::Instant::now() >= deadline {
                let (_, h) = self.get(&format!("/v1/tasks/{id}/history"), token).await;
                let types: Vec<&str> = h["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["type"].as_str())
                    .collect();
                panic!(
                    "task {id} stayed {} (wanted {want:?}); its events: {types:?}",
                    t["status"]
                );
            }
            // Wake on the next append, or look again after 50 ms.
            let _ = tokio::time::timeout(Duration::from_millis(50), updates.recv()).await;
        }
    }

    pub async fn task_count(&self) -> usize {
        self.g.task_count().await
    }
}

pub async fn body(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

pub fn deploy(version: &str) -> Value {
    json!({"workflow": "deploy_with_rollback", "input": {"service": "web", "version": version}})
}
