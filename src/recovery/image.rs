//! A SKU's shards as the ledger says they must be: what a restore writes.

use std::collections::BTreeMap;
use std::time::Duration;

use super::audit::state_letter;
use super::RecoveryError;
use crate::ids::{Sku, UserId};
use crate::ledger::{Ledger, LedgerRepo, StockAccount};
use crate::sharding::{home_shard, split};
use crate::store::{
    hold_field, HoldRecord, KeyEntry, ShardImage, ShardRules, SkuConfig, UserRecord,
};

/// Every shard of a SKU as the ledger has it, and the SKU's routing record.
pub(super) struct SkuImage {
    /// Shards `0..shards.len()`: every shard the SKU ever had.
    pub shards: Vec<ShardImage>,
    /// The routing record.
    pub config: SkuConfig,
}

/// The shards the ledger knows of a SKU: those its rules route to, and any its rows name.
pub(super) async fn shards_in_ledger(ledger: &Ledger, sku: &Sku) -> Result<u16, RecoveryError> {
    let mut shards = ledger
        .skus()
        .await?
        .into_iter()
        .find(|s| s.sku == sku.as_str())
        .map_or(0, |s| s.shards);
    for row in ledger.stock_rows(sku.as_str()).await? {
        shards = shards.max(u16::try_from(row.shard + 1).unwrap_or(u16::MAX));
    }
    for r in ledger.reservations(sku.as_str()).await? {
        shards = shards.max(r.shard.saturating_add(1));
    }
    Ok(shards)
}

/// Builds the images of `shards` shards of `sku` from the ledger. `Err(why)` when the ledger
/// cannot rebuild it (no load of the SKU, or rows naming shards beyond `shards`).
pub(super) async fn build(
    ledger: &Ledger,
    sku: &Sku,
    shards: u16,
) -> Result<Result<SkuImage, String>, RecoveryError> {
    let Some(sku_rules) = ledger
        .skus()
        .await?
        .into_iter()
        .find(|s| s.sku == sku.as_str())
    else {
        return Ok(Err(
            "the ledger has no load of this SKU to rebuild from".into()
        ));
    };
    let shards = shards.max(sku_rules.shards);
    let rules = ShardRules {
        per_user_limit: sku_rules.per_user_limit,
        hold_ms: sku_rules.hold_ms,
        starts_at_ms: sku_rules.starts_at_ms,
        ends_at_ms: sku_rules.ends_at_ms,
        shards: sku_rules.shards,
    };
    let reservations = ledger.reservations(sku.as_str()).await?;
    let barriers = ledger.barriers(sku.as_str()).await?;
    let figures = ledger.figures(sku.as_str()).await?;
    let account = StockAccount::fold(&ledger.stock_rows(sku.as_str()).await?);
    let positions = ledger.settled_positions(sku.as_str()).await?;
    let mut images: Vec<ShardImage> = (0..shards)
        .map(|shard| ShardImage {
            rules,
            settled_up_to: positions.get(&shard).copied().unwrap_or((0, 0)),
            ..ShardImage::default()
        })
        .collect();
    // Each shard's users' records: allowances, then keys and barriers.
    let mut users: Vec<BTreeMap<String, UserRecord>> = vec![BTreeMap::new(); usize::from(shards)];
    for r in &reservations {
        let Some(image) = images.get_mut(usize::from(r.shard)) else {
            return Ok(Err(format!(
                "reservation {} names shard {} of {shards}",
                r.rid, r.shard
            )));
        };
        let letter = state_letter(&r.state);
        let quantity = u64::from(r.quantity);
        match letter {
            "h" => image.held += quantity,
            "c" => image.sold += quantity,
            _ => {}
        }
        let user = users[usize::from(r.shard)]
            .entry(r.user.clone())
            .or_default();
        if matches!(letter, "h" | "c") {
            user.units += quantity;
        }
        let field = hold_field(&r.rid).to_owned();
        let origin = r.key.clone().unwrap_or_default();
        let cart = origin.strip_prefix('#').map(str::to_owned);
        // A cart's line has no key in its user's record: the cart's key is in its record.
        if cart.is_none() && !origin.is_empty() {
            user.keys.push((origin, KeyEntry::Hold(field.clone())));
        }
        let hold = HoldRecord {
            state: letter.to_owned(),
            user: r.user.clone(),
            quantity,
            deadline_ms: r.deadline_ms.unwrap_or(0),
            cart,
            caller: r.caller.clone(),
        };
        image.fields.push((field, hold.format()));
        image.made += 1;
    }
    for (user, key) in &barriers {
        let Ok(id) = UserId::new(user.as_str()) else {
            continue;
        };
        let shard = usize::from(home_shard(&id, rules.shards));
        let record = users[shard].entry(user.clone()).or_default();
        record.keys.push((key.clone(), KeyEntry::Barrier));
        images[shard].made += 1;
    }
    for (shard, records) in account.shards {
        let Some(image) = images.get_mut(usize::from(shard)) else {
            return Ok(Err(format!("ledger rows name shard {shard} of {shards}")));
        };
        for (op, units) in records.ops {
            image.fields.push((format!(":o:{op}"), units.to_string()));
        }
        for (id, units) in records.moves_in {
            image.fields.push((format!(":i:{id}"), units.to_string()));
        }
        for out in records.moves_out {
            image
                .fields
                .push((format!(":x:{}", out.id), out.units.to_string()));
        }
        image.pending = records.pending;
    }
    // Available units are what the ledger says is neither held, sold nor in transit, spread
    // over the shards users are routed to (moves bring them to where buyers are).
    for ((image, users), units) in images.iter_mut().zip(users).zip(
        split(figures.available(), rules.shards)
            .into_iter()
            .chain(std::iter::repeat(0)),
    ) {
        image.available = units;
        image.fields.extend(
            users
                .into_iter()
                .map(|(user, record)| (user, record.format())),
        );
    }
    let config = SkuConfig {
        sku: sku.clone(),
        shards: rules.shards,
        ever_shards: shards,
        stock: figures.stock,
        per_user_limit: rules.per_user_limit,
        hold: Duration::from_millis(rules.hold_ms),
        starts_at_ms: (rules.starts_at_ms > 0).then_some(rules.starts_at_ms),
        ends_at_ms: (rules.ends_at_ms > 0).then_some(rules.ends_at_ms),
    };
    Ok(Ok(SkuImage {
        shards: images,
        config,
    }))
}
