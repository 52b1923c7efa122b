//! Request bodies are JSON objects, and only objects.
//!
//! serde's derived `Deserialize` for a struct also accepts a sequence of its
//! fields in declaration order, so `[[false]]` was a valid netctl PATCH
//! (replacing the policy with one that has no internet access) and
//! `["echo", ["hi"]]` a valid process to start. No client means to send
//! that, and a body the SPEC does not describe must be refused, not guessed
//! at. [`object_only!`] makes a type's `Deserialize` read a map and nothing
//! else, keeping everything else the derive does (defaults, unknown-field
//! refusal, error messages that name the field).

use serde::de::{Deserializer, Visitor};

/// A deserializer that reads a struct only from a map. Everything but
/// `deserialize_struct` goes to the wrapped deserializer unchanged.
#[doc(hidden)]
pub struct MapOnly<D>(pub D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Implements `Serialize` and `Deserialize` for structs that derive both
/// with `#[serde(remote = "Self")]` (which turns the derived code into
/// inherent functions), so that they deserialize from objects only.
#[macro_export]
macro_rules! object_only {
    ($($ty:ty),+ $(,)?) => {$(
        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                <$ty>::serialize(self, serializer)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                <$ty>::deserialize($crate::json::MapOnly(deserializer))
            }
        }
    )+};
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(remote = "Self", deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        a: u8,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(remote = "Self")]
    struct Inner {
        b: bool,
    }

    crate::object_only!(Body, Inner);

    #[test]
    fn objects_parse_as_before() {
        let body: Body = serde_json::from_str(r#"{"a":1,"inner":{"b":true}}"#).unwrap();
        assert_eq!(
            body,
            Body {
                a: 1,
                inner: Some(Inner { b: true })
            }
        );
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"a":1,"inner":{"b":true}}"#
        );
        let err = serde_json::from_str::<Body>(r#"{"c":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `c`"), "{err}");
    }

    #[test]
    fn arrays_are_refused_at_any_depth() {
        for json in ["[]", "[1]", r#"{"inner":[true]}"#] {
            let err = serde_json::from_str::<Body>(json).unwrap_err();
            assert!(
                err.to_string().contains("invalid type: sequence"),
                "{json}: {err}"
            );
        }
    }
}
