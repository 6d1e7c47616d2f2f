//! The Docker plugin socket: libnetwork's remote network driver and remote IPAM driver
//! protocols (HTTP POST of JSON to `/Plugin.Activate`, `/NetworkDriver.*`, `/IpamDriver.*`).
//! Every call takes the same lock as the bpfbridge API, so the two never interleave. An
//! error is `{"Err": "..."}`, which dockerd shows to the user.

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Error,
    api::{Shared, status_of},
    model::docker::{
        ActivateReply, CreateEndpointRequest, CreateNetworkRequest, Empty, EndpointInfoReply,
        EndpointRequest, ErrorReply, ExternalConnectivityRequest, IpamCapabilities, JoinRequest,
        NetworkCapabilities, NetworkRequest, ReleaseAddressRequest, ReleasePoolRequest,
        RequestAddressRequest, RequestPoolRequest,
    },
    service::ADDRESS_SPACES,
};

struct PluginError(Error);

impl IntoResponse for PluginError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        let err = self.0.report();
        if status.is_server_error() {
            tracing::error!("docker plugin: {err}");
        } else {
            tracing::info!("docker plugin: refused: {err}");
        }
        (status, Json(ErrorReply { err })).into_response()
    }
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        PluginError(e)
    }
}

type Reply = Result<Response, PluginError>;

fn decode<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, PluginError> {
    serde_json::from_slice(bytes)
        .map_err(|e| PluginError(Error::InvalidArgument(format!("invalid request body: {e}"))))
}

fn ok(body: impl Serialize) -> Reply {
    Ok((StatusCode::OK, Json(body)).into_response())
}

pub fn router(service: Shared) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/NetworkDriver.GetCapabilities", post(network_capabilities))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(endpoint_info))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(leave))
        .route(
            "/NetworkDriver.ProgramExternalConnectivity",
            post(program_external),
        )
        .route(
            "/NetworkDriver.RevokeExternalConnectivity",
            post(revoke_external),
        )
        // Node discovery is for multi-host drivers; a local one has nothing to do.
        .route("/NetworkDriver.DiscoverNew", post(nothing))
        .route("/NetworkDriver.DiscoverDelete", post(nothing))
        .route("/IpamDriver.GetCapabilities", post(ipam_capabilities))
        .route("/IpamDriver.GetDefaultAddressSpaces", post(address_spaces))
        .route("/IpamDriver.RequestPool", post(request_pool))
        .route("/IpamDriver.ReleasePool", post(release_pool))
        .route("/IpamDriver.RequestAddress", post(request_address))
        .route("/IpamDriver.ReleaseAddress", post(release_address))
        .fallback(unknown)
        .with_state(service)
}

async fn unknown(uri: axum::http::Uri) -> Reply {
    Err(PluginError(Error::NotFound(format!(
        "{} is not supported by the bpfbridge plugin",
        uri.path().trim_start_matches('/')
    ))))
}

async fn activate() -> Reply {
    ok(ActivateReply {
        implements: vec!["NetworkDriver", "IpamDriver"],
    })
}

async fn nothing() -> Reply {
    ok(Empty {})
}

async fn network_capabilities() -> Reply {
    ok(NetworkCapabilities {
        scope: "local",
        connectivity_scope: "local",
    })
}

async fn create_network(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: CreateNetworkRequest = decode(&bytes)?;
    s.lock().await.docker_create_network(request).await?;
    ok(Empty {})
}

async fn delete_network(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: NetworkRequest = decode(&bytes)?;
    s.lock()
        .await
        .docker_delete_network(&request.network_id)
        .await?;
    ok(Empty {})
}

async fn create_endpoint(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: CreateEndpointRequest = decode(&bytes)?;
    ok(s.lock().await.docker_create_endpoint(request)?)
}

async fn delete_endpoint(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: EndpointRequest = decode(&bytes)?;
    s.lock()
        .await
        .docker_delete_endpoint(&request.endpoint_id)
        .await?;
    ok(Empty {})
}

async fn endpoint_info(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: EndpointRequest = decode(&bytes)?;
    ok(EndpointInfoReply {
        value: s.lock().await.docker_endpoint_info(&request.endpoint_id),
    })
}

async fn join(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: JoinRequest = decode(&bytes)?;
    ok(s.lock().await.docker_join(request).await?)
}

async fn leave(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: EndpointRequest = decode(&bytes)?;
    s.lock().await.docker_leave(&request.endpoint_id).await?;
    ok(Empty {})
}

async fn program_external(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: ExternalConnectivityRequest = decode(&bytes)?;
    s.lock().await.docker_program_external(request).await?;
    ok(Empty {})
}

async fn revoke_external(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: EndpointRequest = decode(&bytes)?;
    s.lock()
        .await
        .docker_revoke_external(&request.endpoint_id)
        .await?;
    ok(Empty {})
}

async fn ipam_capabilities() -> Reply {
    ok(IpamCapabilities {
        requires_mac_address: false,
        requires_request_replay: false,
    })
}

async fn address_spaces() -> Reply {
    ok(ADDRESS_SPACES)
}

async fn request_pool(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: RequestPoolRequest = decode(&bytes)?;
    ok(s.lock().await.ipam_request_pool(request).await?)
}

async fn release_pool(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: ReleasePoolRequest = decode(&bytes)?;
    s.lock().await.ipam_release_pool(&request.pool_id)?;
    ok(Empty {})
}

async fn request_address(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: RequestAddressRequest = decode(&bytes)?;
    ok(s.lock().await.ipam_request_address(request)?)
}

async fn release_address(State(s): State<Shared>, bytes: Bytes) -> Reply {
    let request: ReleaseAddressRequest = decode(&bytes)?;
    s.lock()
        .await
        .ipam_release_address(&request.pool_id, &request.address)?;
    ok(Empty {})
}
