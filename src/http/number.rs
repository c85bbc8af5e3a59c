//! Whole numbers in JSON bodies, read the way JSON Schema reads `"type": "integer"`: `2`
//! and `2.0` are the same integer. serde's integer types refuse `2.0`, and a client (or an
//! API fuzzer) that sends it has sent a valid request.

use serde::de::{Deserialize, Deserializer, Error};
use serde_json::Value;

/// `value` as a whole number, if it is one: an integer, or a number with a zero fraction
/// within the range JSON numbers count exactly (2^53).
pub fn whole(value: &Value) -> Option<u64> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let number = value.as_number()?;
    number.as_u64().or_else(|| {
        let f = number.as_f64()?;
        (f.fract() == 0.0 && (0.0..=EXACT).contains(&f)).then_some(f as u64)
    })
}

/// A quantity as the client sent it, any JSON value: the handler judges it, so that every
/// wrong one (`0`, `-1`, `1.5`, `"2"`, `1e12`) gets one `invalid_quantity` that names the
/// bound, rather than a deserializer's message.
#[derive(Debug, Default)]
pub struct RawQuantity(Option<Value>);

impl RawQuantity {
    /// The quantity (`default` when absent), if it is a whole number from 1 to `max`.
    pub fn within(&self, default: u64, max: u64) -> Option<u64> {
        self.0
            .as_ref()
            .map_or(Some(default), whole)
            .filter(|q| (1..=max).contains(q))
    }
}

impl<'de> Deserialize<'de> for RawQuantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(|v| Self(Some(v)))
    }
}

/// For `#[serde(deserialize_with)]` on an optional whole-number field: `null` or absent is
/// `None`. The handler checks the range (and names it).
pub fn optional<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let Some(value) = Option::<Value>::deserialize(deserializer)? else {
        return Ok(None);
    };
    whole(&value)
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("expected a whole number (got {value})")))
}

/// For `#[serde(deserialize_with)]` on a required whole-number field.
pub fn required<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    optional(deserializer)?.ok_or_else(|| D::Error::custom("expected a whole number (got null)"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn whole_numbers_are_read_as_json_schema_reads_integers() {
        for (value, expected) in [
            (json!(2), Some(2)),
            (json!(2.0), Some(2)),
            (json!(639.0), Some(639)),
            (json!(0), Some(0)),
            (json!(1.5), None),
            (json!(-1), None),
            (json!(-1.0), None),
            (json!("2"), None),
            (json!(null), None),
            (json!(1e300), None),
        ] {
            assert_eq!(whole(&value), expected, "{value}");
        }
    }

    #[test]
    fn a_raw_quantity_is_judged_against_its_bound() {
        let raw = |v: Value| RawQuantity(Some(v));
        assert_eq!(RawQuantity::default().within(1, 5), Some(1));
        assert_eq!(raw(json!(5.0)).within(1, 5), Some(5));
        assert_eq!(raw(json!(6)).within(1, 5), None);
        assert_eq!(raw(json!(0)).within(1, 5), None);
        assert_eq!(raw(json!("2")).within(1, 5), None);
        assert_eq!(RawQuantity::default().within(0, 5), None, "no default");
    }

    #[test]
    fn whole_number_fields_take_integral_floats() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(deserialize_with = "required")]
            stock: u64,
            #[serde(default, deserialize_with = "optional")]
            shards: Option<u64>,
        }
        let parse = |text: &str| serde_json::from_str::<Body>(text).map(|b| (b.stock, b.shards));
        assert_eq!(
            parse(r#"{"stock": 3.0, "shards": 4.0}"#).unwrap(),
            (3, Some(4))
        );
        assert_eq!(parse(r#"{"stock": 3, "shards": null}"#).unwrap(), (3, None));
        assert_eq!(parse(r#"{"stock": 3}"#).unwrap(), (3, None));
        let error = parse(r#"{"stock": 3, "shards": 1.5}"#)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("expected a whole number (got 1.5)"),
            "{error}"
        );
        assert!(parse(r#"{"stock": -1}"#).is_err());
        assert!(parse(r#"{"shards": 1}"#).is_err(), "stock is required");
    }
}
