//! Carts after Redis lost data: each cart's record rebuilt from the ledger.
//!
//! The ledger has, for every cart one of whose lines it settled, the terms every line
//! carries (user, key, line count, deadline) and the state of each settled line. The state
//! the record must be in follows from those: a line is confirmed only once its cart is
//! confirming, released only once it is cancelling, expiring or rolling back, so the
//! lines say which step the cart was in, and the maintenance pass finishes that step
//! (`Store::finish_due_carts`), as it would for a lost engine. Run after every SKU was
//! repaired, so the lines' holds are back in their shards first.

use super::RecoveryError;
use crate::ids::{CallerName, CartId, IdempotencyKey, ReservationId, Sku, UserId};
use crate::ledger::{Ledger, LedgerCart, LedgerRepo};
use crate::store::{Cart, CartLine, CartState, Store};

/// The state a cart's record is rebuilt in, from its settled lines; `None` for a cart
/// nothing of which is left to rebuild (no line settled).
pub fn state_from_ledger(cart: &LedgerCart) -> Option<CartState> {
    let count = |state: &str| cart.settled.iter().filter(|l| l.state == state).count();
    let (settled, total) = (cart.settled.len(), usize::from(cart.lines));
    let (confirmed, cancelled, expired) =
        (count("confirmed"), count("cancelled"), count("expired"));
    Some(match () {
        _ if settled == 0 => return None,
        _ if confirmed > 0 && confirmed == total => CartState::Confirmed,
        _ if confirmed > 0 => CartState::Confirming,
        _ if expired > 0 && expired == total => CartState::Expired,
        _ if expired > 0 => CartState::Expiring,
        // Fewer lines settled than the cart has: it was still opening (or rolling back).
        _ if settled < total => CartState::RollingBack,
        _ if cancelled == total => CartState::Cancelled,
        _ if cancelled > 0 => CartState::Cancelling,
        _ => CartState::Held,
    })
}

/// Writes the record of every cart the ledger knows and Redis lost. Returns how many.
pub async fn restore_carts(store: &Store, ledger: &Ledger) -> Result<usize, RecoveryError> {
    let mut restored = 0;
    for settled in ledger.carts().await? {
        let Some(state) = state_from_ledger(&settled) else {
            continue;
        };
        let Some(cart) = cart_of(&settled, state) else {
            tracing::error!(cart = %settled.cart_id, "a cart in the ledger that cannot be read");
            continue;
        };
        if store.restore_cart(&cart).await? {
            restored += 1;
        }
    }
    if restored > 0 {
        tracing::warn!(restored, "cart records rebuilt from the ledger");
    }
    Ok(restored)
}

fn cart_of(settled: &LedgerCart, state: CartState) -> Option<Cart> {
    let lines = settled
        .settled
        .iter()
        .map(|line| {
            Some(CartLine {
                sku: Sku::new(line.sku.as_str()).ok()?,
                quantity: line.quantity,
                reservation: ReservationId::parse(&line.rid).ok()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Cart {
        id: CartId::parse(&settled.cart_id).ok()?,
        user: UserId::new(settled.user.as_str()).ok()?,
        key: IdempotencyKey::new(settled.key.as_str()).ok()?,
        state,
        deadline_ms: settled.deadline_ms,
        lines,
        // Every line carries its cart's caller.
        caller: match settled
            .settled
            .iter()
            .find_map(|line| line.caller.as_deref())
        {
            Some(name) => Some(CallerName::new(name).ok()?),
            None => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerCartLine;

    fn cart(lines: u16, states: &[&str]) -> LedgerCart {
        LedgerCart {
            cart_id: "cart~1~aaaaaaaaaaaaaaaaaaaa".into(),
            user: "ann".into(),
            key: "k".into(),
            lines,
            deadline_ms: 1,
            settled: states
                .iter()
                .enumerate()
                .map(|(i, state)| LedgerCartLine {
                    rid: format!("s{i}~0~aaaaaaaaaaaaaaaaaaaa"),
                    sku: format!("s{i}"),
                    quantity: 1,
                    state: (*state).to_owned(),
                    caller: None,
                })
                .collect(),
        }
    }

    #[test]
    fn the_lines_say_which_step_the_cart_was_in() {
        use CartState::*;
        let cases: [(u16, &[&str], Option<CartState>); 11] = [
            (2, &[], None),
            (2, &["held", "held"], Some(Held)),
            (2, &["held"], Some(RollingBack)),
            (3, &["cancelled", "held"], Some(RollingBack)),
            (2, &["confirmed", "confirmed"], Some(Confirmed)),
            (2, &["confirmed", "held"], Some(Confirming)),
            (2, &["cancelled", "cancelled"], Some(Cancelled)),
            (2, &["cancelled", "held"], Some(Cancelling)),
            (2, &["expired", "expired"], Some(Expired)),
            (2, &["held", "expired"], Some(Expiring)),
            (1, &["held"], Some(Held)),
        ];
        for (lines, states, want) in cases {
            assert_eq!(
                state_from_ledger(&cart(lines, states)),
                want,
                "{lines} {states:?}"
            );
        }
    }
}
