//! The invariants a sale must end with, checked through the API, in Redis and in the
//! ledger, after the reconciler has settled everything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use flashsale::ledger::{Ledger, LedgerRepo};
use flashsale::recovery::audit;
use flashsale::store::Store;
use serde_json::Value;

use crate::client::{Call, Connection, Target};
use crate::run::Book;
use crate::scenario::Scenario;

/// Direct access to the engine's Redis and ledger, when the harness knows where they are.
pub struct Inspect {
    /// The engine's store (same Redis, same key prefix).
    pub store: Store,
    /// The engine's ledger.
    pub ledger: Option<Ledger>,
}

/// Invariant name -> what broke it (empty: it held).
pub type Violations = BTreeMap<&'static str, Vec<String>>;

/// The SKU as the API shows it, once its settled figures equal the live ones (or after
/// `within`, whichever first).
async fn settled_view(target: &Target, sku: &str, within: Duration) -> anyhow::Result<Value> {
    let mut conn = Connection::open(target).await?;
    let call = Call::Get {
        path: format!("/v1/skus/{sku}"),
    };
    let started = Instant::now();
    loop {
        let view = conn.json(&call).await?;
        let settled = &view["settled"];
        let caught_up = settled.is_null()
            || ["available", "held", "sold"]
                .iter()
                .all(|f| settled[f] == view[f]);
        if caught_up || started.elapsed() > within {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every cart a buyer was told of, read whole: each of its lines must stand as its cart
/// does (held, confirmed, cancelled, expired); a cart between steps at the end is one.
async fn partial_carts(target: &Target, book: &Book) -> anyhow::Result<Option<String>> {
    let mut conn = Connection::open(target).await?;
    let mut partial = Vec::new();
    for cart in book.carts.keys() {
        let view = conn
            .json(&Call::Get {
                path: format!("/v1/carts/{cart}"),
            })
            .await?;
        let status = view["status"].as_str().unwrap_or("missing").to_owned();
        for line in view["lines"].as_array().into_iter().flatten() {
            let rid = line["reservation_id"].as_str().unwrap_or_default();
            let hold = conn
                .json(&Call::Get {
                    path: format!("/v1/reservations/{rid}"),
                })
                .await?;
            if hold["status"] != status.as_str() {
                partial.push(format!(
                    "cart {cart} is {status}, its line {rid} {}",
                    hold["status"]
                ));
            }
        }
        if !matches!(
            status.as_str(),
            "held" | "confirmed" | "cancelled" | "expired"
        ) {
            partial.push(format!("cart {cart} is {status} at the end"));
        }
    }
    Ok((!partial.is_empty()).then(|| partial.join("; ")))
}

/// Checks every invariant; returns the violations by invariant.
pub async fn verify(
    target: &Target,
    scenario: &Scenario,
    book: &Book,
    inspect: Option<&Inspect>,
) -> anyhow::Result<(Violations, Value)> {
    let view = settled_view(target, &scenario.sku, Duration::from_secs(60)).await?;
    let n = |field: &str| view[field].as_u64().unwrap_or(0);
    let (stock, available, held, sold) = (n("stock"), n("available"), n("held"), n("sold"));
    let mut violations: Violations = BTreeMap::new();
    let mut check = |name: &'static str, broken: Option<String>| {
        let entry = violations.entry(name).or_default();
        if let Some(what) = broken {
            entry.push(what);
        }
    };

    check(
        "no_oversell",
        (sold + held > stock).then(|| format!("{sold} sold + {held} held of {stock}")),
    );
    check(
        "no_undersell",
        (scenario.closing_wave && scenario.demand_exceeds_supply() && sold != stock)
            .then(|| format!("{sold} of {stock} sold with demand above supply ({available} left)")),
    );
    let confirmed_units: u64 = book.confirmed_by_user().values().sum();
    check(
        "sales_match_buyers",
        (confirmed_units != sold)
            .then(|| format!("{sold} sold, {confirmed_units} confirmed to buyers")),
    );
    let over: Vec<String> = book
        .confirmed_by_user()
        .into_iter()
        .filter(|(_, units)| *units > u64::from(scenario.per_user_limit))
        .map(|(user, units)| format!("{user} bought {units}"))
        .collect();
    check(
        "per_user_limit",
        (!over.is_empty()).then(|| over.join(", ")),
    );

    if scenario.bundle.is_some() {
        check("no_partial_cart", partial_carts(target, book).await?);
    }
    if let Some(bundle) = &scenario.bundle {
        let view = settled_view(target, &bundle.sku, Duration::from_secs(60)).await?;
        let n = |field: &str| view[field].as_u64().unwrap_or(0);
        check(
            "bundle_conserved",
            (n("available") + n("held") + n("sold") != bundle.stock)
                .then(|| format!("{}: {view}", bundle.sku)),
        );
        let bought = book
            .carts_confirmed
            .iter()
            .filter_map(|cart| book.carts.get(cart))
            .count() as u64;
        check(
            "bundle_sales_match_carts",
            (bought != n("sold"))
                .then(|| format!("{} sold, {bought} carts confirmed to buyers", n("sold"))),
        );
        check(
            "bundle_nothing_left_held",
            (scenario.closing_wave && n("held") > 0).then(|| {
                format!(
                    "{} units of {} still held at the end",
                    n("held"),
                    bundle.sku
                )
            }),
        );
    }

    let Some(inspect) = inspect else {
        check(
            "conservation",
            (stock < available + held + sold)
                .then(|| format!("{stock} < {available} + {held} + {sold}")),
        );
        return Ok((violations, view));
    };
    let sku = scenario.sku.parse()?;
    let totals = inspect.store.totals(&sku).await?;
    check(
        "conservation",
        (!totals.conserved()).then(|| format!("{totals:?}")),
    );
    let Some(ledger) = &inspect.ledger else {
        return Ok((violations, view));
    };
    let reservations = ledger.reservations(&scenario.sku).await?;
    let in_ledger: BTreeSet<&str> = reservations
        .iter()
        .filter(|r| r.state == "confirmed")
        .map(|r| r.rid.as_str())
        .collect();
    let told: BTreeSet<&str> = book.confirmed.iter().map(String::as_str).collect();
    let missing: Vec<&str> = told.difference(&in_ledger).copied().collect();
    let extra: Vec<&str> = in_ledger.difference(&told).copied().collect();
    check(
        "confirmed_in_ledger_exactly_once",
        (!missing.is_empty() || !extra.is_empty())
            .then(|| format!("missing from the ledger: {missing:?}; in the ledger, never confirmed to a buyer: {extra:?}")),
    );
    let mut by_user: BTreeMap<&str, u64> = BTreeMap::new();
    for r in reservations
        .iter()
        .filter(|r| r.state == "held" || r.state == "confirmed")
    {
        *by_user.entry(r.user.as_str()).or_default() += u64::from(r.quantity);
    }
    let over: Vec<String> = by_user
        .iter()
        .filter(|(_, units)| **units > u64::from(scenario.per_user_limit))
        .map(|(user, units)| format!("{user} holds or owns {units} in the ledger"))
        .collect();
    check(
        "per_user_limit",
        (!over.is_empty()).then(|| over.join(", ")),
    );
    let report = audit::run(&inspect.store, ledger, None, false).await?;
    check(
        "ledger_equals_redis",
        (!report.drifts.is_empty()).then(|| report.to_string()),
    );
    Ok((violations, view))
}
