//! Validated identifiers. Every Redis key and script argument built from client input goes
//! through one of these types first, so nothing unchecked ever reaches a key name.
//!
//! Ids are 1-64 characters (idempotency keys 1-128) of `[A-Za-z0-9._-]`: no `{`, `}` (which
//! would move a key to another hash slot), no `:` or `|` (separators inside the shard hash),
//! no `~` (the reservation id separator), no whitespace or control characters.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty.
    #[error("{what} must not be empty")]
    Empty {
        /// Which identifier.
        what: &'static str,
    },
    /// Longer than allowed.
    #[error("{what} must be at most {max} characters")]
    TooLong {
        /// Which identifier.
        what: &'static str,
        /// The maximum length.
        max: usize,
    },
    /// A character outside `[A-Za-z0-9._-]`.
    #[error("{what} may contain only ASCII letters and digits, '.', '_' and '-'")]
    BadCharacter {
        /// Which identifier.
        what: &'static str,
    },
    /// A reservation id that is not `<sku>~<shard>~<random>`.
    #[error("malformed reservation id")]
    MalformedReservationId,
    /// A cart id that is not `cart~<bucket>~<random>`.
    #[error("malformed cart id")]
    MalformedCartId,
}

fn check(what: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    if value.len() > max {
        return Err(IdError::TooLong { what, max });
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(IdError::BadCharacter { what });
    }
    Ok(())
}

macro_rules! checked_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted value, in characters.
            pub const MAX_LEN: usize = $max;

            /// Validates `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($what, &value, $max)?;
                Ok(Self(value))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

checked_id!(
    /// A stock-keeping unit: the thing on sale.
    Sku,
    "sku",
    64
);
checked_id!(
    /// A buyer.
    UserId,
    "user_id",
    64
);
checked_id!(
    /// A client's idempotency key for a reserve, scoped to (sku, user).
    IdempotencyKey,
    "idempotency_key",
    128
);
checked_id!(
    /// A named caller of the reservation routes (`--client-token NAME=TOKEN`): recorded in
    /// each hold it makes, so that only it may confirm or cancel the hold.
    CallerName,
    "caller name",
    32
);
checked_id!(
    /// The id of an operation made idempotent by the caller (restock).
    OpId,
    "operation id",
    64
);

/// Random characters in a reservation or move id: 20 of base32 = 100 bits.
const RANDOM_LEN: usize = 20;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// `RANDOM_LEN` characters of base32 from the thread's cryptographic generator.
pub fn random_token() -> String {
    let mut rng = rand::rng();
    (0..RANDOM_LEN)
        .map(|_| BASE32[rng.random_range(0..32)] as char)
        .collect()
}

/// A reservation id: `<sku>~<shard>~<random>`. It names the shard that holds the
/// reservation, so confirm and cancel route without a lookup, and carries 100 random bits,
/// so ids cannot be guessed. Forging another SKU or shard into an id finds nothing: the
/// hold is stored under the whole id in the shard the id names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId {
    text: String,
    sku: Sku,
    shard: u16,
}

impl ReservationId {
    /// A fresh id for a hold in `shard` of `sku`.
    pub fn generate(sku: &Sku, shard: u16) -> Self {
        Self {
            text: format!("{sku}~{shard}~{}", random_token()),
            sku: sku.clone(),
            shard,
        }
    }

    /// Parses and validates an id given by a client.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let mut parts = text.splitn(3, '~');
        let (Some(sku), Some(shard), Some(random)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(IdError::MalformedReservationId);
        };
        let sku = Sku::new(sku).map_err(|_| IdError::MalformedReservationId)?;
        let shard_ok = !shard.is_empty()
            && shard.len() <= 4
            && shard.bytes().all(|b| b.is_ascii_digit())
            && (shard == "0" || !shard.starts_with('0'));
        let random_ok = random.len() == RANDOM_LEN && random.bytes().all(|b| BASE32.contains(&b));
        if !shard_ok || !random_ok {
            return Err(IdError::MalformedReservationId);
        }
        let shard = shard.parse().map_err(|_| IdError::MalformedReservationId)?;
        Ok(Self {
            text: text.to_owned(),
            sku,
            shard,
        })
    }

    /// The SKU the reservation belongs to.
    pub fn sku(&self) -> &Sku {
        &self.sku
    }

    /// The shard that holds it.
    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for ReservationId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

/// Cart records are spread over this many buckets, each a hash slot of its own (see
/// [`crate::keys::KeySpace::cart_bucket`]); a user's carts all live in one, so that the
/// cart and its idempotency key are written by one script.
pub const CART_BUCKETS: u16 = 16;

/// A cart id: `cart~<bucket>~<random>`. The bucket is the user's (see [`CartId::bucket_of`]),
/// so the id routes to its record without a lookup; the 100 random bits make it unguessable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CartId {
    text: String,
    bucket: u16,
}

impl CartId {
    /// A fresh id for a cart of `user`.
    pub fn generate(user: &UserId) -> Self {
        let bucket = Self::bucket_of(user);
        Self {
            text: format!("cart~{bucket}~{}", random_token()),
            bucket,
        }
    }

    /// The bucket of a user's carts.
    pub fn bucket_of(user: &UserId) -> u16 {
        crate::sharding::home_shard(user, CART_BUCKETS)
    }

    /// Parses and validates an id given by a client.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let mut parts = text.splitn(3, '~');
        let (Some("cart"), Some(bucket), Some(random)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(IdError::MalformedCartId);
        };
        let bucket_ok = !bucket.is_empty()
            && bucket.len() <= 2
            && bucket.bytes().all(|b| b.is_ascii_digit())
            && (bucket == "0" || !bucket.starts_with('0'));
        let random_ok = random.len() == RANDOM_LEN && random.bytes().all(|b| BASE32.contains(&b));
        let bucket: u16 = match bucket.parse() {
            Ok(b) if bucket_ok && random_ok && b < CART_BUCKETS => b,
            _ => return Err(IdError::MalformedCartId),
        };
        Ok(Self {
            text: text.to_owned(),
            bucket,
        })
    }

    /// The bucket that holds the cart's record.
    pub fn bucket(&self) -> u16 {
        self.bucket
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for CartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What made a hold: a client's idempotency key, or a cart (whose line it is). A hold
/// record and a `reserved` event carry it as one field: the key, or `#` and the cart id.
/// No idempotency key contains `#`, so a client cannot pass its reserve off as a cart line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HoldOrigin {
    /// A single reservation, made with this key.
    Key(IdempotencyKey),
    /// A line of this cart; `field` is `#` and the cart id.
    Cart {
        /// The cart.
        cart: CartId,
        /// The field as stored.
        field: String,
    },
}

impl HoldOrigin {
    /// Reads the field a script stored.
    pub fn parse(field: &str) -> Result<Self, IdError> {
        match field.strip_prefix('#') {
            Some(cart) => CartId::parse(cart).map(Self::of_cart),
            None => IdempotencyKey::new(field).map(Self::Key),
        }
    }

    /// The origin of a line of `cart`.
    pub fn of_cart(cart: CartId) -> Self {
        Self::Cart {
            field: format!("#{cart}"),
            cart,
        }
    }

    /// The field as the scripts store it.
    pub fn field(&self) -> &str {
        match self {
            Self::Key(key) => key.as_str(),
            Self::Cart { field, .. } => field,
        }
    }

    /// The idempotency key, for a single reservation.
    pub fn key(&self) -> Option<&IdempotencyKey> {
        match self {
            Self::Key(key) => Some(key),
            Self::Cart { .. } => None,
        }
    }

    /// The cart, for a cart's line.
    pub fn cart(&self) -> Option<&CartId> {
        match self {
            Self::Key(_) => None,
            Self::Cart { cart, .. } => Some(cart),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_alphabet_and_refuse_the_rest() {
        assert!(Sku::new("phone-X_1.2").is_ok());
        assert_eq!(Sku::new(""), Err(IdError::Empty { what: "sku" }));
        assert_eq!(
            Sku::new("a".repeat(65)),
            Err(IdError::TooLong {
                what: "sku",
                max: 64
            })
        );
        assert_eq!(
            UserId::new("José").unwrap_err().to_string(),
            "user_id may contain only ASCII letters and digits, '.', '_' and '-'"
        );
        assert!(IdempotencyKey::new("k".repeat(128)).is_ok());
        assert!(IdempotencyKey::new("k".repeat(129)).is_err());
        for bad in [
            "a{b", "a}b", "a:b", "a*b", "a b", "a|b", "a~b", "é", "a\nb", "a\0",
        ] {
            assert!(
                matches!(UserId::new(bad), Err(IdError::BadCharacter { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reservation_ids_round_trip_and_refuse_forgeries() {
        let sku = Sku::new("tv-55").unwrap();
        let id = ReservationId::generate(&sku, 7);
        let parsed = ReservationId::parse(id.as_str()).unwrap();
        assert_eq!(parsed, id);
        assert_eq!(parsed.sku(), &sku);
        assert_eq!(parsed.shard(), 7);
        assert_ne!(
            ReservationId::generate(&sku, 7),
            ReservationId::generate(&sku, 7)
        );

        let random = id.as_str().rsplit('~').next().unwrap();
        for bad in [
            "".to_string(),
            "tv-55".to_string(),
            format!("tv-55~7~{}", &random[1..]),
            format!("tv-55~07~{random}"),
            format!("tv-55~-1~{random}"),
            format!("tv-55~99999~{random}"),
            format!("tv:55~7~{random}"),
            format!("tv-55~7~{}", random.to_uppercase()),
            format!("{{tv}}~7~{random}"),
        ] {
            assert_eq!(
                ReservationId::parse(&bad),
                Err(IdError::MalformedReservationId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cart_ids_round_trip_route_by_user_and_refuse_forgeries() {
        let user = UserId::new("u-42").unwrap();
        let id = CartId::generate(&user);
        assert_eq!(CartId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.bucket(), CartId::bucket_of(&user));
        let random = id.as_str().rsplit('~').next().unwrap();
        for bad in [
            "".to_string(),
            format!("cart~16~{random}"),
            format!("cart~03~{random}"),
            format!("cart~~{random}"),
            format!("cart~3~{}", &random[1..]),
            format!("cart~3~{}", random.to_uppercase()),
            format!("carts~3~{random}"),
            format!("tv~3~{random}"),
        ] {
            assert_eq!(
                CartId::parse(&bad),
                Err(IdError::MalformedCartId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_hold_origin_is_a_key_or_a_cart_and_no_key_passes_for_a_cart() {
        let cart = CartId::generate(&UserId::new("u").unwrap());
        let line = HoldOrigin::of_cart(cart.clone());
        assert_eq!(HoldOrigin::parse(line.field()).unwrap(), line);
        assert_eq!(line.cart(), Some(&cart));
        let key = HoldOrigin::parse("k-1").unwrap();
        assert_eq!(key.key().map(|k| k.as_str()), Some("k-1"));
        assert!(
            HoldOrigin::parse(cart.as_str()).is_err(),
            "a cart id is not a key"
        );
        assert!(HoldOrigin::parse("#k-1").is_err());
    }
}
