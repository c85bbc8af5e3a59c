//! A lean HTTP/1.1 client: one hyper connection per worker, kept alive, no pooling logic on
//! the hot path, so that the load generator costs little of the cores it shares with the
//! server under test.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's address.
    pub addr: SocketAddr,
    host: String,
    /// The engine's gRPC face (its `--grpc-listen`), when it serves one and the load
    /// should use it ([`crate::protocol::Protocol::Grpc`]).
    pub grpc: Option<SocketAddr>,
}

impl Target {
    /// A target from a base URL such as `http://127.0.0.1:8080`.
    pub fn parse(base: &str) -> anyhow::Result<Self> {
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("only http:// targets are supported: {base}"))?;
        let host = rest.trim_end_matches('/').to_owned();
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&host)?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {host}"))?;
        Ok(Self {
            addr,
            host,
            grpc: None,
        })
    }

    /// The same target, its gRPC face at `addr` (`HOST:PORT`).
    pub fn with_grpc(self, addr: &str) -> anyhow::Result<Self> {
        let grpc = std::net::ToSocketAddrs::to_socket_addrs(addr)?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {addr}"))?;
        Ok(Self {
            grpc: Some(grpc),
            ..self
        })
    }

    /// The base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.host)
    }
}

/// A request the load generator sends.
#[derive(Debug, Clone)]
pub enum Call {
    /// `POST /v1/reservations`.
    Reserve {
        /// SKU.
        sku: String,
        /// Buyer.
        user: String,
        /// Units.
        quantity: u32,
        /// Idempotency key (the same on a retry).
        key: String,
    },
    /// `POST /v1/reservations/{rid}/confirm`.
    Confirm {
        /// Reservation id.
        rid: String,
    },
    /// `POST /v1/reservations/{rid}/cancel`.
    Cancel {
        /// Reservation id.
        rid: String,
    },
    /// `POST /v1/carts`: one unit of each SKU but the first, `quantity` of the first.
    Cart {
        /// Buyer.
        user: String,
        /// The SKUs and their units.
        lines: Vec<(String, u32)>,
        /// Idempotency key (the same on a retry).
        key: String,
    },
    /// `POST /v1/carts/{id}/confirm`.
    ConfirmCart {
        /// Cart id.
        cart: String,
    },
    /// `POST /v1/carts/{id}/cancel`.
    CancelCart {
        /// Cart id.
        cart: String,
    },
    /// `GET <path>`.
    Get {
        /// Path.
        path: String,
    },
}

/// What came back, reduced to what the harness needs; an answer over gRPC is read into the
/// same shape ([`crate::grpc_client`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status. Over gRPC: what the HTTP face answers a success with (201 for a
    /// reserve or a cart, 200 for the rest), and for an error the HTTP status of its gRPC
    /// code ([`crate::grpc_client::http_status`]).
    pub status: u16,
    /// The problem code, for an error (over gRPC, the `ErrorInfo` reason lowercased).
    pub code: Option<String>,
    /// The reservation id, for a reservation.
    pub reservation_id: Option<String>,
    /// `Idempotent-Replayed: true` was set (over gRPC, the answer's `replayed`).
    pub replayed: bool,
    /// The cart id, for a cart.
    pub cart_id: Option<String>,
    /// A cart's lines: SKU and reservation id.
    pub lines: Vec<(String, String)>,
}

impl Answer {
    /// The outcome label: `held`, `replayed`, `confirmed`, `cancelled`, `ok`, or the
    /// problem code (`sold_out`, `rate_limited`, ...); for a cart's calls, the same with
    /// `cart_` before it.
    pub fn outcome(&self, call: &Call) -> String {
        if let Some(code) = &self.code {
            if matches!(
                call,
                Call::Cart { .. } | Call::ConfirmCart { .. } | Call::CancelCart { .. }
            ) {
                return format!("cart_{code}");
            }
            return code.clone();
        }
        match (call, self.status) {
            (Call::Cart { .. }, 201) if self.replayed => "cart_replayed".into(),
            (Call::Cart { .. }, 201) => "cart_held".into(),
            (Call::ConfirmCart { .. }, 200) => "cart_confirmed".into(),
            (Call::CancelCart { .. }, 200) => "cart_cancelled".into(),
            (Call::Reserve { .. }, 201) if self.replayed => "replayed".into(),
            (Call::Reserve { .. }, 201) => "held".into(),
            (Call::Confirm { .. }, 200) => "confirmed".into(),
            (Call::Cancel { .. }, 200) => "cancelled".into(),
            (_, status) if (200..300).contains(&status) => "ok".into(),
            (_, status) => format!("http_{status}"),
        }
    }
}

#[derive(Deserialize)]
struct Body {
    code: Option<String>,
    reservation_id: Option<String>,
    cart_id: Option<String>,
    #[serde(default)]
    lines: Vec<LineBody>,
}

/// A cart's line, or a refused cart's line (which has no reservation).
#[derive(Deserialize)]
struct LineBody {
    sku: String,
    reservation_id: Option<String>,
}

/// One kept-alive connection.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    target: Target,
}

impl Connection {
    /// Connects to `target`.
    pub async fn open(target: &Target) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            target: target.clone(),
        })
    }

    /// Sends `call` and reads the whole answer.
    pub async fn send(&mut self, call: &Call) -> anyhow::Result<Answer> {
        let (method, path, body, key) = match call {
            Call::Reserve {
                sku,
                user,
                quantity,
                key,
            } => (
                Method::POST,
                "/v1/reservations".to_owned(),
                format!(r#"{{"sku":"{sku}","user_id":"{user}","quantity":{quantity}}}"#),
                Some(key.as_str()),
            ),
            Call::Confirm { rid } => (
                Method::POST,
                format!("/v1/reservations/{rid}/confirm"),
                String::new(),
                None,
            ),
            Call::Cancel { rid } => (
                Method::POST,
                format!("/v1/reservations/{rid}/cancel"),
                String::new(),
                None,
            ),
            Call::Cart { user, lines, key } => {
                let lines: Vec<String> = lines
                    .iter()
                    .map(|(sku, quantity)| format!(r#"{{"sku":"{sku}","quantity":{quantity}}}"#))
                    .collect();
                (
                    Method::POST,
                    "/v1/carts".to_owned(),
                    format!(r#"{{"user_id":"{user}","lines":[{}]}}"#, lines.join(",")),
                    Some(key.as_str()),
                )
            }
            Call::ConfirmCart { cart } => (
                Method::POST,
                format!("/v1/carts/{cart}/confirm"),
                String::new(),
                None,
            ),
            Call::CancelCart { cart } => (
                Method::POST,
                format!("/v1/carts/{cart}/cancel"),
                String::new(),
                None,
            ),
            Call::Get { path } => (Method::GET, path.clone(), String::new(), None),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.target.host);
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        self.sender.ready().await?;
        let response = self
            .sender
            .send_request(request.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = response.status().as_u16();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let bytes = response.into_body().collect().await?.to_bytes();
        let parsed: Option<Body> = serde_json::from_slice(&bytes).ok();
        let Some(body) = parsed else {
            return Ok(Answer {
                status,
                code: None,
                reservation_id: None,
                replayed,
                cart_id: None,
                lines: Vec::new(),
            });
        };
        Ok(Answer {
            status,
            code: body.code,
            reservation_id: body.reservation_id,
            replayed,
            cart_id: body.cart_id,
            lines: body
                .lines
                .into_iter()
                .filter_map(|line| Some((line.sku, line.reservation_id?)))
                .collect(),
        })
    }

    /// Sends `call` and returns the JSON body (for reading figures, not on the hot path).
    pub async fn json(&mut self, call: &Call) -> anyhow::Result<serde_json::Value> {
        let path = match call {
            Call::Get { path } => path.clone(),
            _ => anyhow::bail!("json() reads GET calls only"),
        };
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(HOST, &self.target.host)
            .body(Full::new(Bytes::new()))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// `PUT path` with a JSON body and a bearer token, on a fresh connection; returns the status.
pub async fn put_json(
    target: &Target,
    path: &str,
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<u16> {
    let mut conn = Connection::open(target).await?;
    let request = Request::builder()
        .method(Method::PUT)
        .uri(path)
        .header(HOST, &target.host)
        .header(CONTENT_TYPE, "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
    conn.sender.ready().await?;
    let response = conn.sender.send_request(request).await?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await?;
    Ok(status)
}
