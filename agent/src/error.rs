//! The library's error type. Each variant says what failed and keeps its source; the API
//! maps the kind to an HTTP status.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (bad name, bad port, ...).
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is understood but not allowed (removing a predefined network, ...).
    #[error("{0}")]
    Forbidden(String),
    /// The request clashes with existing state (duplicate name, port already published).
    #[error("{0}")]
    Conflict(String),
    /// A fault of the agent's own (a broken invariant, a thread that died), not of the
    /// request.
    #[error("{0}")]
    Internal(String),
    #[error("IP address pool of network {network} is exhausted")]
    PoolExhausted { network: String },
    #[error("netlink: {context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state database {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("dataplane: {context}: {source}")]
    Dataplane {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Several independent steps of a teardown failed; all were attempted.
    #[error("{}", .0.iter().map(Error::report).collect::<Vec<_>>().join("; "))]
    Multiple(Vec<Error>),
}

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub fn sys(context: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
        let context = context.into();
        move |source| Error::Sys { context, source }
    }

    pub fn netlink(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
        let context = context.into();
        move |source| Error::Netlink { context, source }
    }

    pub fn dataplane<E>(context: impl Into<String>) -> impl FnOnce(E) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let context = context.into();
        move |source| Error::Dataplane {
            context,
            source: Box::new(source),
        }
    }

    /// The error and its chain of causes, each cause once: the variants' messages name
    /// their immediate source, deeper ones (an aya map error's errno, ...) would be lost.
    pub fn report(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            let line = e.to_string();
            if !text.contains(&line) {
                text = format!("{text}: {line}");
            }
            cause = e.source();
        }
        text
    }

    /// Folds the errors of a teardown that ran every step.
    pub fn collect(errors: Vec<Error>) -> Result<()> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.into_iter().next().expect("one error")),
            _ => Err(Error::Multiple(errors)),
        }
    }
}
