//! How the load reaches an engine: HTTP/1.1 (the default) or the engine's gRPC face. Either
//! way a worker keeps one connection, sends the same [`Call`]s with the same idempotency
//! keys, and reads each answer as the same [`Answer`] with the same outcome labels, so
//! that the sale's book, its checks and its report do not depend on the protocol.
//!
//! Only the load changes protocol: loading SKUs, the closing wave's reads of the SKU and
//! the checks stay on HTTP, which every engine serves.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::client::{Answer, Call, Connection, Target};
use crate::grpc_client::GrpcConnection;

/// The protocol of the load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `POST /v1/reservations` and the rest over HTTP/1.1 ([`crate::client`]).
    #[default]
    Http,
    /// `flashsale.v1.Reservations` over HTTP/2 ([`crate::grpc_client`]): the engine must
    /// serve its gRPC face (`flashsale serve --grpc-listen`).
    Grpc,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http => "HTTP/1.1",
            Self::Grpc => "gRPC",
        })
    }
}

/// One connection of the load, over either protocol.
pub enum LoadConnection {
    /// A kept-alive HTTP/1.1 connection.
    Http(Connection),
    /// One HTTP/2 connection to the gRPC face.
    Grpc(GrpcConnection),
}

impl LoadConnection {
    /// Connects to `target` over `protocol`; for gRPC, `target` must know the engine's
    /// gRPC address ([`Target::grpc`]).
    pub async fn open(target: &Target, protocol: Protocol) -> anyhow::Result<Self> {
        Ok(match protocol {
            Protocol::Http => Self::Http(Connection::open(target).await?),
            Protocol::Grpc => {
                let addr = target.grpc.ok_or_else(|| {
                    anyhow::anyhow!("no gRPC address is known for {}", target.base())
                })?;
                Self::Grpc(GrpcConnection::open(addr).await?)
            }
        })
    }

    /// Sends `call` and reads the whole answer.
    pub async fn send(&mut self, call: &Call) -> anyhow::Result<Answer> {
        match self {
            Self::Http(connection) => connection.send(call).await,
            Self::Grpc(connection) => connection.send(call).await,
        }
    }
}
