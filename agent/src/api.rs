//! The agent's JSON API over a unix socket (HTTP/1.1, Docker-style paths and field names).
//! Errors are `{"message": "..."}` with a status that says what kind of error it is.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{MatchedPath, Path, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{
    Error,
    metrics::Metrics,
    model::{
        CniAttachRequest, ConnectRequest, CreateContainer, CreateFilter, CreateNetwork,
        DisconnectRequest,
    },
    service::Service,
};

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

/// The HTTP status of an error: 4xx for the request's mistakes, 500 for the agent's or
/// the node's faults (a store, netlink or dataplane error), whose message carries the cause.
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::PoolExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
        // Listed, not `_`: a new kind of error must be placed on one side or the other.
        Error::Internal(_)
        | Error::Netlink { .. }
        | Error::Io { .. }
        | Error::Sys { .. }
        | Error::State { .. }
        | Error::Store { .. }
        | Error::Dataplane { .. }
        | Error::Multiple(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        let message = self.0.report();
        if status.is_server_error() {
            tracing::error!("{message}");
        }
        (status, Json(ErrorBody { message })).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The API's routes, each request's latency recorded in `metrics`.
pub fn router(service: Shared, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/info", get(info))
        .route("/containers", get(list_containers).post(create_container))
        .route(
            "/containers/{name}",
            get(inspect_container).delete(remove_container),
        )
        .route("/networks", get(list_networks).post(create_network))
        .route("/networks/prune", post(prune_networks))
        .route(
            "/networks/{id}",
            get(inspect_network).delete(remove_network),
        )
        .route("/networks/{id}/connect", post(connect))
        .route("/networks/{id}/disconnect", post(disconnect))
        .route("/filters", get(list_filters).post(add_filter))
        .route("/filters/{id}", delete(remove_filter))
        .route("/conntrack", get(list_flows).delete(flush_flows))
        .route("/monitor", get(monitor))
        .route("/ports", get(ports))
        .route("/stats", get(stats))
        .route(
            "/cni/attachments",
            get(list_cni_attachments).post(cni_attach),
        )
        .route(
            "/cni/attachments/{container_id}/{ifname}",
            get(check_cni_attachment).delete(cni_detach),
        )
        .fallback(|| async { ApiError(Error::NotFound("no such API endpoint".into())) })
        .with_state(service)
        // Around each route (`Router::layer`), where the matched route is known.
        .layer(middleware::from_fn_with_state(metrics, observe_latency))
}

/// Records how long a request took until its response's head, by method, route pattern
/// and status.
async fn observe_latency(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let response = next.run(request).await;
    metrics.observe_api_request(
        &method,
        route.as_deref(),
        response.status(),
        started.elapsed(),
    );
    response
}

/// Parses a JSON body by hand, so that a bad body gets the same error shape as everything
/// else.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(Error::InvalidArgument(format!("invalid request body: {e}"))))
}

async fn info(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.info()?))
}

async fn list_containers(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.list_containers()?))
}

async fn create_container(State(s): State<Shared>, bytes: Bytes) -> ApiResult<impl IntoResponse> {
    let request: CreateContainer = body(&bytes)?;
    let created = s.lock().await.create_container(request).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn inspect_container(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.inspect_container(&name)?))
}

async fn remove_container(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    s.lock().await.remove_container(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_networks(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.list_networks()?))
}

async fn create_network(State(s): State<Shared>, bytes: Bytes) -> ApiResult<impl IntoResponse> {
    let request: CreateNetwork = body(&bytes)?;
    let created = s.lock().await.create_network(request).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn inspect_network(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.inspect_network(&id)?))
}

async fn remove_network(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    s.lock().await.remove_network(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn prune_networks(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.prune_networks().await?))
}

async fn connect(
    State(s): State<Shared>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<impl IntoResponse> {
    let request: ConnectRequest = body(&bytes)?;
    s.lock().await.connect(&id, request).await?;
    Ok(StatusCode::OK)
}

async fn disconnect(
    State(s): State<Shared>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<impl IntoResponse> {
    let request: DisconnectRequest = body(&bytes)?;
    s.lock().await.disconnect(&id, request).await?;
    Ok(StatusCode::OK)
}

async fn ports(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.published()?))
}

async fn stats(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.stats()?))
}

async fn list_cni_attachments(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.cni_attachments()?))
}

async fn cni_attach(State(s): State<Shared>, bytes: Bytes) -> ApiResult<impl IntoResponse> {
    let request: CniAttachRequest = body(&bytes)?;
    let attached = s.lock().await.cni_attach(request).await?;
    Ok((StatusCode::CREATED, Json(attached)))
}

async fn check_cni_attachment(
    State(s): State<Shared>,
    Path((container_id, ifname)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        s.lock().await.cni_check(&container_id, &ifname).await?,
    ))
}

async fn cni_detach(
    State(s): State<Shared>,
    Path((container_id, ifname)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    s.lock().await.cni_detach(&container_id, &ifname).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_filters(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.lock().await.list_filters()?))
}

async fn add_filter(State(s): State<Shared>, bytes: Bytes) -> ApiResult<impl IntoResponse> {
    let request: CreateFilter = body(&bytes)?;
    let added = s.lock().await.add_filter(request)?;
    Ok((StatusCode::CREATED, Json(added)))
}

async fn remove_filter(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id: u32 = id.parse().map_err(|_| {
        ApiError(Error::InvalidArgument(format!(
            "invalid filter rule id {id:?}"
        )))
    })?;
    s.lock().await.remove_filter(id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_flows(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    // Reading a big flow table takes a while: not under the lock every other call takes.
    let list = s.lock().await.flow_lister()?;
    let flows = tokio::task::spawn_blocking(list)
        .await
        .map_err(Error::dataplane("listing flows"))??;
    Ok(Json(flows))
}

async fn flush_flows(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    let removed = s.lock().await.flush_flows()?;
    Ok(Json(serde_json::json!({ "Flushed": removed })))
}

/// Drop, new-flow and repair events as newline-delimited JSON, for as long as the client
/// reads.
async fn monitor(State(s): State<Shared>) -> ApiResult<Response> {
    let receiver = s.lock().await.subscribe();
    let lines = futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => {
                    let mut line = serde_json::to_vec(&event).unwrap_or_default();
                    line.push(b'\n');
                    return Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from(line)),
                        receiver,
                    ));
                }
                // A slow reader misses events rather than holding the agent up.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .map_err(|e| ApiError(Error::Internal(format!("building the response: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_of_the_agent_are_500_with_their_cause() {
        let user = Error::InvalidArgument("invalid host port \"x\"".into());
        assert_eq!(status_of(&user), StatusCode::BAD_REQUEST);
        assert_eq!(
            status_of(&Error::NotFound("no such container: x".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_of(&Error::Conflict("already in use".into())),
            StatusCode::CONFLICT
        );

        #[derive(Debug, thiserror::Error)]
        #[error("the `bpf_map_update_elem` syscall failed")]
        struct Syscall(#[source] std::io::Error);
        let fault = Error::dataplane("publishing 8080/tcp")(Syscall(
            std::io::Error::from_raw_os_error(libc::E2BIG),
        ));
        assert_eq!(status_of(&fault), StatusCode::INTERNAL_SERVER_ERROR);
        let report = fault.report();
        assert!(
            report.starts_with(
                "dataplane: publishing 8080/tcp: the `bpf_map_update_elem` syscall failed: "
            ) && report.contains("Argument list too long"),
            "{report}"
        );
        assert_eq!(report.matches("syscall failed").count(), 1, "{report}");
        assert_eq!(
            status_of(&Error::Internal("namespace thread panicked".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    /// The routes `router` serves, as `METHOD /path`, read from this file's source.
    fn served_routes() -> Vec<String> {
        let source = include_str!("api.rs");
        let table = &source[source.find("Router::new()").expect("the router")..];
        let table = &table[..table.find(".fallback(").expect("the fallback")];
        let mut routes = Vec::new();
        for call in table.split(".route(").skip(1) {
            let path = call.split('"').nth(1).expect("a path literal");
            for method in ["get", "post", "put", "patch", "delete"] {
                let called = call.match_indices(&format!("{method}(")).any(|(at, _)| {
                    !call[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if called {
                    routes.push(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        routes
    }

    #[test]
    fn every_route_is_documented() {
        let docs = include_str!("../../docs/api.md");
        let routes = served_routes();
        assert!(routes.len() >= 20, "the router was read: {routes:?}");
        let undocumented: Vec<&String> = routes
            .iter()
            .filter(|r| !docs.contains(&format!("| `{r}` |")))
            .collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the table of docs/api.md: {undocumented:?}"
        );
        // And nothing in the table that the router does not serve.
        let documented = docs
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once("` |").map(|(route, _)| route))
            .filter(|r| {
                ["GET ", "POST ", "PUT ", "PATCH ", "DELETE "]
                    .iter()
                    .any(|m| r.starts_with(m))
            });
        for route in documented {
            assert!(
                routes.iter().any(|r| r == route),
                "docs/api.md documents {route}, which the router does not serve"
            );
        }
    }
}
