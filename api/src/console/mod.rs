//! The web console (README "Web console", ARCHITECTURE "The web console"):
//! server-rendered pages at `/` for the people who watch and steer agents —
//! inbox, task pages with the verified timeline and the plan's DAG, the
//! approval panel, coordination (notifications, time to intervention,
//! escalations, coverage), governance and the kill switch. Templates are
//! askama's (compile-checked, HTML-escaped: nothing an agent wrote is ever
//! marked safe); htmx (vendored, embedded) keeps the live parts live: a task
//! page over Server-Sent Events (`live`, htmx's SSE extension), the inbox by
//! polling. Pages read without JavaScript; every action is a POST form with
//! the session's CSRF token, and the role rules are the API's.

mod actions;
mod coordination;
mod live;
mod pages;
pub mod session;
mod view;

use std::sync::Arc;

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::state::AppState;
pub use pages::PAGE_SIZE;
pub use session::Sessions;
/// How the console writes a time (UTC, to the millisecond); its filters read it back.
pub use view::time as format_time;

/// The content security policy of every console page: only this origin's
/// scripts and styles (no inline script or style), no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// The console's routes, to merge into the application.
pub fn routes() -> Router<AppState> {
    let sessions = Arc::new(Sessions::new(session::MAX_SESSIONS, session::SESSION_TTL));
    Router::new()
        .route("/", get(pages::inbox))
        .route("/inbox/rows", get(pages::inbox_rows))
        .route("/signin", get(pages::signin_page).post(actions::signin))
        .route("/signout", post(actions::signout))
        .route("/tasks/{id}", get(pages::task))
        .route("/tasks/{id}/live", get(pages::task_live))
        .route("/tasks/{id}/stream", get(live::task_stream))
        .route("/tasks/{id}/replay", get(pages::replay))
        .route("/tasks/{id}/{action}", post(actions::task_action))
        .route("/approvals", get(pages::approvals))
        .route("/approvals/{id}", post(actions::decide))
        .route("/approvals/{id}/preview", post(actions::preview_edit))
        .route("/preapprovals", post(actions::grant))
        .route("/preapprovals/{id}/revoke", post(actions::revoke))
        .route("/coordination", get(coordination::coordination))
        .route("/governance", get(pages::governance))
        .route("/governance/dry-run", post(actions::dry_run))
        .route("/halt", post(actions::halt))
        .route("/halt/lift", post(actions::lift))
        .route("/assets/{file}", get(asset))
        .layer(axum::Extension(sessions))
        .layer(middleware::from_fn(security_headers))
}

/// CSP, no sniffing, no referrer, no framing, no caching of pages.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The embedded static files (htmx, the stylesheet, the console's script).
#[derive(rust_embed::Embed)]
#[folder = "src/console/assets/"]
struct Assets;

async fn asset(Path(file): Path<String>) -> Response {
    let Some(f) = Assets::get(&file) else {
        return ConsoleError::new(StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mime = match file.rsplit_once('.').map(|(_, e)| e) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    };
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        f.data.into_owned(),
    )
        .into_response()
}

/// A page that could not be shown or an action that was refused, as HTML.
#[derive(Debug)]
pub struct ConsoleError {
    status: StatusCode,
    message: String,
    sign_in: bool,
}

impl ConsoleError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            sign_in: false,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// Not signed in: pages redirect to the sign-in page.
    pub fn sign_in() -> Self {
        Self {
            sign_in: true,
            ..Self::new(StatusCode::UNAUTHORIZED, "sign in first")
        }
    }
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        let p = e.parts();
        if p.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %p.message, "console");
            return Self::internal("internal error; the details are in the server's log");
        }
        Self::new(p.status, p.message.clone())
    }
}

impl From<mandate_engine::runtime::Error> for ConsoleError {
    fn from(e: mandate_engine::runtime::Error) -> Self {
        ApiError::from(e).into()
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "console/error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if self.sign_in {
            return Redirect::to("/signin").into_response();
        }
        let page = ErrorPage {
            status: self.status.as_u16(),
            reason: self.status.canonical_reason().unwrap_or(""),
            message: &self.message,
        };
        (self.status, page).into_response()
    }
}
