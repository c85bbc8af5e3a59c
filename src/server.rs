//! The engine as a process: connects the store, starts the background tasks, binds the
//! faces (HTTP always, gRPC when asked), serves until told to stop, and stops in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::Admission;
use crate::api::{AppState, Shared};
use crate::config::ServeConfig;
use crate::grpc::GrpcFace;
use crate::metrics::Metrics;
use crate::recovery::identity;
use crate::registry::Registry;
use crate::settlement::{self, SettlementOptions};
use crate::store::Store;
use crate::{gates, http, maintenance};

/// How long start-up waits for the ledger when Redis has to be checked against it.
const STARTUP_LEDGER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a command says when the Redis at `url` does not answer.
pub fn unreachable_redis(url: &dyn std::fmt::Display) -> String {
    format!(
        "cannot reach Redis at {url}: start one there, point --redis-url (or \
         FLASHSALE_REDIS_URL) at one, or try `flashsale-loadtest serve` for a private \
         Redis that lives as long as the engine"
    )
}

/// A built service: listener bound, store connected, ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    /// The gRPC face, when `--grpc-listen` asks for it.
    grpc: Option<GrpcFace>,
    background: Vec<JoinHandle<()>>,
    /// Tells the ledger side to finish its batch and stop.
    stop: watch::Sender<bool>,
    settlement: Option<JoinHandle<()>>,
    state: AppState,
}

impl Application {
    /// Connects to Redis, learns the loaded SKUs, binds the listener and starts the
    /// background tasks (sweeper, move recovery, sold-out refresh).
    pub async fn build(config: &ServeConfig) -> anyhow::Result<Self> {
        let target = config.redis.target()?;
        let database_url = config.database_url();
        let store = Store::connect(&config.redis.store_options(target.clone()))
            .await
            .with_context(|| unreachable_redis(&target))?;
        store
            .sync_clock()
            .await
            .with_context(|| unreachable_redis(&target))?;
        let admission = Arc::new(Admission::new(&config.admission()));
        for sku in store.skus().await? {
            admission.know(&*store.config(&sku).await?);
        }
        let client_tokens = config
            .client_tokens()
            .context("bad --client-token, --client-tokens-file or FLASHSALE_CLIENT_TOKENS")?
            .map(Arc::new);
        let metrics = Arc::new(Metrics::new());
        metrics
            .max_in_flight
            .set(config.max_in_flight.max(1) as i64);
        metrics.know_callers(client_tokens.iter().flat_map(|tokens| tokens.names()));
        // Joined before serving, so that the first request is admitted at this engine's share.
        let registry = Registry::join(
            store.clone(),
            admission.clone(),
            metrics.clone(),
            config.registry(),
        )
        .await
        .with_context(|| unreachable_redis(&target))?;
        let state = AppState::new(Shared {
            store: store.clone(),
            admission: admission.clone(),
            metrics,
            admin_token: config.admin_token.as_deref().map(Arc::from),
            client_tokens,
            openapi: Arc::new(http::openapi_json()),
            ledger: Arc::default(),
            registry,
            live: Arc::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let settlement = database_url.clone().map(|database_url| {
            let options = SettlementOptions {
                database_url,
                reconcile: !config.no_reconcile,
                audit_every: (config.audit_interval_s > 0)
                    .then(|| std::time::Duration::from_secs(config.audit_interval_s)),
            };
            settlement::spawn(
                options,
                store.clone(),
                state.ledger.clone(),
                state.metrics.clone(),
                admission.clone(),
                stopped,
            )
        });
        // A Redis never checked against the ledger is not served from until it is.
        let trust = identity::Trust {
            ledger: state.ledger.clone(),
            ledger_expected: database_url.is_some(),
            repair: !config.no_audit_repair,
        };
        if !identity::check_identity(&state.store, &admission, &trust).await? {
            // A Redis not yet checked: give the ledger a moment to connect and check it
            // before serving (if it does not come, the service starts suspended).
            trust.ledger_ready(STARTUP_LEDGER_WAIT).await;
            identity::check_identity(&state.store, &admission, &trust).await?;
        }
        let listener = TcpListener::bind(config.listen).await?;
        let background = vec![
            state.registry.spawn(),
            maintenance::spawn_shared(
                store.clone(),
                config.sweep_interval(),
                state.registry.clone(),
                state.metrics.clone(),
                config.retire_after(),
            ),
            state.live.spawn(state.metrics.clone(), admission.clone()),
            gates::spawn(store, admission, config.sold_out_poll(), trust),
        ];
        let grpc = match config.grpc_listen {
            Some(addr) => Some(
                GrpcFace::bind(addr, state.clone())
                    .await
                    .with_context(|| format!("cannot listen for gRPC on {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            router: http::router(state.clone()),
            listener,
            grpc,
            background,
            stop,
            settlement,
            state,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address the gRPC face listens on, if it is served.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(GrpcFace::local_addr)
    }

    /// The shared state (store, admission, metrics).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves both faces until `shutdown` completes, then finishes the requests and calls
    /// in flight on both and stops the background tasks.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stopping, stop_serving) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stopping.send(true);
        });
        let stopped = |mut stop: watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        // The sale page's streams never end by themselves: they end when shutdown begins,
        // so that the graceful shutdown can finish.
        let live = self.state.live.clone();
        let http_stopped = stopped(stop_serving.clone());
        let http = axum::serve(self.listener, self.router).with_graceful_shutdown(async move {
            http_stopped.await;
            live.close();
        });
        let grpc = async {
            match self.grpc {
                Some(grpc) => grpc.serve(stopped(stop_serving)).await,
                None => Ok(()),
            }
        };
        let (served, grpc_served) = tokio::join!(http, grpc);
        if let Err(error) = grpc_served {
            tracing::warn!(%error, "the gRPC face failed");
        }
        for task in self.background {
            task.abort();
        }
        // Every request is answered: the others may take this engine's share now.
        if let Err(error) = self.state.registry.leave().await {
            tracing::warn!(%error, "could not leave the engine registry");
        }
        // The reconciler finishes the batch it is settling; a stuck one is not waited for.
        let _ = self.stop.send(true);
        if let Some(settlement) = self.settlement {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), settlement).await;
        }
        served
    }
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
