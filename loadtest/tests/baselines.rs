//! The baselines against real servers the tests start themselves: a burst of buyers four
//! times the stock sells exactly the stock, no more, and the backend agrees.

use std::collections::HashSet;
use std::net::SocketAddr;

use flashsale_loadtest::baseline::{serve_naive, serve_pg_hotrow, PG_HOTROW_DEFAULT_POOL_SIZE};
use flashsale_testkit::{LocalPostgres, LocalRedis};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const STOCK: usize = 50;
const BUYERS: usize = 200;
const SKU: &str = "flash-1";

/// A status code, the headers as lines and the body of one HTTP/1.1 exchange.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// One request on its own connection, `Connection: close`, so the answer is everything the
/// server sends before closing: no client library needed.
async fn send(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let key_header = key
        .map(|k| format!("Idempotency-Key: {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{key_header}\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let raw = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

fn reserve_body(user: &str) -> String {
    format!(r#"{{"sku":"{SKU}","user_id":"{user}"}}"#)
}

/// Binds a free loopback port and serves a baseline on it until the sender is used.
async fn spawn<F, Fut>(
    serve: F,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<anyhow::Result<()>>,
)
where
    F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel();
    let server = tokio::spawn(serve(listener, stopped));
    (addr, stop, server)
}

/// Checks the answers that do not depend on stock, then loads `STOCK` units and sends
/// `BUYERS` concurrent reserves from distinct users: the reservation ids of the 201s.
async fn sell_out(addr: SocketAddr, baseline: &str) -> HashSet<String> {
    let health = send(addr, "GET", "/healthz", None, "").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(health.head.contains(&format!("x-baseline: {baseline}")));

    let unknown = send(
        addr,
        "POST",
        "/v1/reservations",
        Some("k0"),
        &reserve_body("u0"),
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(unknown.body.contains("sku_not_found"));

    let stock = send(
        addr,
        "PUT",
        &format!("/v1/skus/{SKU}"),
        None,
        &format!(r#"{{"stock":{STOCK}}}"#),
    )
    .await;
    assert_eq!(stock.status, 201, "{}", stock.body);

    let keyless = send(addr, "POST", "/v1/reservations", None, &reserve_body("u0")).await;
    assert_eq!(keyless.status, 400, "{}", keyless.body);
    assert!(keyless.body.contains("missing_idempotency_key"));

    let bad_user = send(
        addr,
        "POST",
        "/v1/reservations",
        Some("k0"),
        &reserve_body("u{0}"),
    )
    .await;
    assert_eq!(bad_user.status, 422, "{}", bad_user.body);
    assert!(bad_user.body.contains("invalid_request"));
    let bad_sku = send(addr, "PUT", "/v1/skus/a:b", None, r#"{"stock":1}"#).await;
    assert_eq!(bad_sku.status, 422, "{}", bad_sku.body);

    let buyers: Vec<_> = (0..BUYERS)
        .map(|i| {
            tokio::spawn(async move {
                let user = format!("user-{i}");
                send(
                    addr,
                    "POST",
                    "/v1/reservations",
                    Some(&format!("key-{i}")),
                    &reserve_body(&user),
                )
                .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut sold_out = 0;
    for buyer in buyers {
        let answer = buyer.await.expect("buyer task");
        match answer.status {
            201 => {
                let view: serde_json::Value = serde_json::from_str(&answer.body).expect("json");
                assert_eq!(view["status"], "held");
                assert_eq!(view["quantity"], 1);
                assert!(ids.insert(view["reservation_id"].as_str().expect("id").to_owned()));
            }
            409 => {
                assert!(answer.body.contains("sold_out"), "{}", answer.body);
                sold_out += 1;
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert_eq!(ids.len(), STOCK, "reservations held");
    assert_eq!(sold_out, BUYERS - STOCK, "buyers turned away");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_redis_sells_exactly_the_stock() {
    let redis = LocalRedis::start().expect("start redis");
    let url = redis.url();
    let server_url = url.clone();
    let (addr, stop, server) = spawn(move |listener, stopped| async move {
        serve_naive(listener, &server_url, "naive", 16, async {
            let _ = stopped.await;
        })
        .await
    })
    .await;

    sell_out(addr, "naive-redis").await;

    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let left: i64 = redis::cmd("GET")
        .arg(format!("naive:{{{SKU}}}:stock"))
        .query_async(&mut conn)
        .await
        .expect("GET stock");
    assert_eq!(left, 0);

    stop.send(()).expect("server still running");
    server.await.expect("server task").expect("server ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_hotrow_sells_exactly_the_stock() {
    let pg = LocalPostgres::start().expect("start postgres");
    let url = pg.url();
    let server_url = url.clone();
    let (addr, stop, server) = spawn(move |listener, stopped| async move {
        serve_pg_hotrow(listener, &server_url, PG_HOTROW_DEFAULT_POOL_SIZE, async {
            let _ = stopped.await;
        })
        .await
    })
    .await;

    let ids = sell_out(addr, "pg-hotrow").await;

    let db = sqlx::PgPool::connect(&url).await.expect("connect postgres");
    let (orders, buyers): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT user_id) FROM baseline_orders")
            .fetch_one(&db)
            .await
            .expect("count orders");
    assert_eq!(orders, STOCK as i64);
    assert_eq!(buyers, STOCK as i64);
    let left: i64 = sqlx::query_scalar("SELECT qty FROM baseline_stock WHERE sku = $1")
        .bind(SKU)
        .fetch_one(&db)
        .await
        .expect("stock row");
    assert_eq!(left, 0);
    let order_ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM baseline_orders")
        .fetch_all(&db)
        .await
        .expect("order ids");
    let order_ids: HashSet<String> = order_ids.iter().map(i64::to_string).collect();
    assert_eq!(order_ids, ids, "each 201 names its order");
    db.close().await;

    stop.send(()).expect("server still running");
    server.await.expect("server task").expect("server ran");
}
