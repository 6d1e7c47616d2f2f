//! A client of the agent's API, used by the CLI and the tests.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request, StatusCode,
    body::{Bytes, Incoming},
};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::{net::UnixStream, task::JoinHandle};

use crate::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the bpfbridge agent at {}: {source} (is the agent running?)", socket.display())]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The agent answered with an error.
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    #[error("unexpected answer from the agent: {0}")]
    Decode(#[from] serde_json::Error),
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    /// Connects, sends one request and returns the answer's status and body, with the task
    /// that drives the connection (abort it when done with the body).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Incoming, JoinHandle<hyper::Result<()>>), ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "bpfbridge")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await?;
        Ok((response.status(), response.into_body(), driver))
    }

    /// The error an unsuccessful answer carries.
    fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
        let message = serde_json::from_slice::<ErrorBody>(bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned());
        ClientError::Api { status, message }
    }

    /// Sends one request; returns the body of a 2xx answer.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let (status, body, driver) = self.send(method, path, body).await?;
        let bytes = body.collect().await?.to_bytes();
        driver.abort();
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(Self::api_error(status, &bytes))
        }
    }

    /// Reads a streaming answer line by line; `on_line` returns false to stop.
    pub async fn stream_lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let (status, mut body, driver) = self.send(Method::GET, path, None).await?;
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            driver.abort();
            return Err(Self::api_error(status, &bytes));
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                pending.extend_from_slice(&data);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if !on_line(String::from_utf8_lossy(&line).trim_end()) {
                        driver.abort();
                        return Ok(());
                    }
                }
            }
        }
        driver.abort();
        Ok(())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let bytes = self.raw(Method::GET, path, None).await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = self
            .raw(Method::POST, path, Some(serde_json::to_vec(body)?))
            .await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// A POST whose answer has no body worth reading.
    pub async fn post_empty<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ClientError> {
        self.raw(Method::POST, path, Some(serde_json::to_vec(body)?))
            .await
            .map(drop)
    }

    /// A DELETE whose answer is JSON.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let bytes = self.raw(Method::DELETE, path, None).await?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.raw(Method::DELETE, path, None).await.map(drop)
    }
}
