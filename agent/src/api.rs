//! The agent's JSON API over a unix socket (HTTP/1.1, Docker-style paths and field names).
//! Errors are `{"message": "..."}` with a status that says what kind of error it is.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{Error, model::CreateContainer, service::Service};

pub type Shared = Arc<Mutex<Service>>;

/// The error body, like Docker's.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

pub struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::PoolExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        if status.is_server_error() {
            tracing::error!("{}", self.0);
        }
        (
            status,
            Json(ErrorBody {
                message: self.0.to_string(),
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(service: Shared) -> Router {
    Router::new()
        .route("/info", get(info))
        .route("/containers", get(list).post(create))
        .route("/containers/{name}", get(inspect).delete(remove))
        .route("/ports", get(ports))
        .route("/stats", get(stats))
        .fallback(|| async { ApiError(Error::NotFound("no such API endpoint".into())) })
        .with_state(service)
}

async fn info(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.info()?))
}

async fn list(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.list()?))
}

async fn create(State(s): State<Shared>, body: Bytes) -> ApiResult<impl IntoResponse> {
    // Parsed by hand so that a bad body gets the same JSON error shape as everything else.
    let request: CreateContainer = serde_json::from_slice(&body)
        .map_err(|e| Error::InvalidArgument(format!("invalid request body: {e}")))?;
    let created = s.lock().await.create(request).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn inspect(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.inspect(&name)?))
}

async fn remove(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<impl IntoResponse> {
    s.lock().await.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn ports(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.published()?))
}

async fn stats(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.stats()?))
}
