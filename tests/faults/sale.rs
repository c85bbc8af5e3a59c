//! A sale under attack: buyers who retry with their idempotency key until they get an
//! answer, and the checks a sale must pass afterwards, whatever happened during it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flashsale::ledger::{Ledger, LedgerRepo};
use flashsale::reconcile::{ReconcileOptions, Reconciler};
use flashsale::recovery::audit;
use flashsale::store::{Store, StoreOptions};
use parking_lot::Mutex;
use reqwest::StatusCode;

use crate::engine::{confirm_until_answered, reserve_until_answered};

/// What the buyers were told.
#[derive(Debug, Default)]
pub struct Told {
    /// Buyer -> reservation id, for buyers who got a hold.
    pub holds: BTreeMap<String, String>,
    /// Reservations confirmed to their buyer.
    pub confirmed: BTreeSet<String>,
    /// Buyers told sold out.
    pub sold_out: u64,
    /// Requests sent again after a failure (a transport error or a 503).
    pub retries: u64,
    /// Holds a buyer was granted and later found gone (their confirm answered 404): what
    /// a Redis that lost acknowledged writes costs.
    pub lost_holds: BTreeSet<String>,
}

/// `buyers` buyers, `concurrency` at a time, each reserving one unit of `sku` and
/// confirming it; `progress` counts buyers done, for a test that strikes mid-sale. With
/// `holds_may_vanish`, a confirm answered 404 is booked as a lost hold instead of failing.
pub async fn run_buyers(
    base: String,
    sku: &str,
    buyers: u64,
    concurrency: u64,
    progress: Arc<AtomicU64>,
    holds_may_vanish: bool,
) -> Told {
    let told = Arc::new(Mutex::new(Told::default()));
    let next = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (base, sku, told, next, progress, client) = (
                base.clone(),
                sku.to_owned(),
                told.clone(),
                next.clone(),
                progress.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= buyers {
                        return;
                    }
                    let user = format!("buyer-{n}");
                    let reply =
                        reserve_until_answered(&client, &base, &sku, &user, &format!("order-{n}"))
                            .await;
                    told.lock().retries += u64::from(reply.attempts - 1);
                    match reply.status {
                        StatusCode::CREATED => {
                            let rid = reply.body["reservation_id"].as_str().unwrap().to_owned();
                            told.lock().holds.insert(user, rid.clone());
                            let confirmed = confirm_until_answered(&client, &base, &rid).await;
                            let mut told = told.lock();
                            told.retries += u64::from(confirmed.attempts - 1);
                            if holds_may_vanish && confirmed.status == StatusCode::NOT_FOUND {
                                told.lost_holds.insert(rid);
                            } else {
                                assert_eq!(
                                    confirmed.status,
                                    StatusCode::OK,
                                    "{:?}",
                                    confirmed.body
                                );
                                told.confirmed.insert(rid);
                            }
                        }
                        StatusCode::CONFLICT => {
                            assert_eq!(reply.body["code"], "sold_out", "{:?}", reply.body);
                            told.lock().sold_out += 1;
                        }
                        other => panic!("{user}: {other} {:?}", reply.body),
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(told).unwrap().into_inner()
}

/// The figures a report of the fault gives.
#[derive(Debug)]
pub struct Outcome {
    pub sold: u64,
    pub retries: u64,
}

/// Settles every stream into the ledger and checks that the audit finds the ledger equal
/// to Redis; returns a store and the ledger for the checks that follow.
pub async fn settled_and_audited(
    redis_url: &str,
    prefix: &str,
    database_url: &str,
) -> (Store, Ledger) {
    let store = Store::connect(&StoreOptions {
        prefix: prefix.to_owned(),
        ..StoreOptions::new(redis_url)
    })
    .await
    .unwrap();
    let ledger = Ledger::connect(database_url).await.unwrap();
    let mut options = ReconcileOptions::new();
    options.claim_idle = Duration::from_millis(100);
    let reconciler = Reconciler::new(store.clone(), ledger.clone(), options, None);
    assert!(
        reconciler.drain(Duration::from_secs(60)).await.unwrap(),
        "streams not settled"
    );
    let report = audit::run(&store, &ledger, None, false).await.unwrap();
    assert!(report.drifts.is_empty(), "{report}");
    (store, ledger)
}

/// Settles the streams, then checks: every hold told to a buyer exists once, confirmed
/// ones confirmed, nothing else was reserved (retries doubled nothing), nothing oversold,
/// the ledger equals Redis.
pub async fn verify(
    redis_url: &str,
    prefix: &str,
    database_url: &str,
    sku: &str,
    stock: u64,
    told: &Told,
) -> Outcome {
    let (store, ledger) = settled_and_audited(redis_url, prefix, database_url).await;
    let reservations = ledger.reservations(sku).await.unwrap();
    let in_ledger: BTreeSet<&str> = reservations.iter().map(|r| r.rid.as_str()).collect();
    let told_rids: BTreeSet<&str> = told.holds.values().map(String::as_str).collect();
    assert_eq!(
        told_rids.len(),
        told.holds.len(),
        "two buyers were told the same reservation"
    );
    assert_eq!(
        in_ledger, told_rids,
        "reservations nobody was told of, or told of and missing"
    );
    let confirmed: BTreeSet<&str> = reservations
        .iter()
        .filter(|r| r.state == "confirmed")
        .map(|r| r.rid.as_str())
        .collect();
    let told_confirmed: BTreeSet<&str> = told.confirmed.iter().map(String::as_str).collect();
    assert_eq!(
        confirmed, told_confirmed,
        "a confirmed sale lost or doubled"
    );

    let totals = store.totals(&sku.parse().unwrap()).await.unwrap();
    assert!(totals.conserved(), "{totals:?}");
    assert!(totals.sold + totals.held <= stock, "oversold: {totals:?}");
    assert_eq!(totals.sold, told.confirmed.len() as u64);
    Outcome {
        sold: totals.sold,
        retries: told.retries,
    }
}
