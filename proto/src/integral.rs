//! Integers as JSON clients may send them: `9` or `9.0`.
//!
//! JSON Schema's `integer` includes `9.0`, and Python's `json` writes any
//! float that way, so the API's integer fields take an integral float as the
//! integer it is; a fraction or a value out of the field's range is refused.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, Unexpected, Visitor};

/// `#[serde(deserialize_with = "integral::int")]`.
pub fn int<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    deserializer.deserialize_any(IntVisitor(PhantomData))
}

/// `#[serde(default, deserialize_with = "integral::option")]`.
pub fn option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    struct Int<T>(T);
    impl<'de, T: TryFrom<i64> + TryFrom<u64>> Deserialize<'de> for Int<T> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            int(deserializer).map(Int)
        }
    }
    Ok(Option::<Int<T>>::deserialize(deserializer)?.map(|Int(v)| v))
}

struct IntVisitor<T>(PhantomData<T>);

impl<T: TryFrom<i64> + TryFrom<u64>> Visitor<'_> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an integer that fits in {}", std::any::type_name::<T>())
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
        // i64's range as f64: the upper bound itself rounds up, so it is
        // excluded.
        if v.fract() == 0.0 && v >= -(2f64.powi(63)) && v < 2f64.powi(63) {
            self.visit_i64(v as i64)
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Fields {
        #[serde(deserialize_with = "super::int")]
        signal: i32,
        #[serde(default, deserialize_with = "super::option")]
        uid: Option<u32>,
    }

    fn parse(json: &str) -> Result<Fields, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integral_floats_are_integers() {
        let f = parse(r#"{"signal": 9.0, "uid": 1000.0}"#).unwrap();
        assert_eq!((f.signal, f.uid), (9, Some(1000)));
        let f = parse(r#"{"signal": -2}"#).unwrap();
        assert_eq!((f.signal, f.uid), (-2, None));
        assert_eq!(parse(r#"{"signal": 1, "uid": null}"#).unwrap().uid, None);
    }

    #[test]
    fn fractions_and_out_of_range_values_are_refused() {
        for bad in [
            r#"{"signal": 9.5}"#,
            r#"{"signal": 3000000000}"#,
            r#"{"signal": 1e300}"#,
            r#"{"signal": "9"}"#,
            r#"{"signal": 1, "uid": -1}"#,
            r#"{"signal": 1, "uid": 5e9}"#,
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("expected"), "{bad}: {err}");
        }
    }
}
