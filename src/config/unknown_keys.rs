//! Unknown keys of a section, found apart from its parse: serde stops at a section's first error,
//! so a wrong type would otherwise hide a misspelt key in the same section.

use std::{collections::BTreeMap, fmt};

use figment::{value::Value, Figment};
use serde::{de, Deserialize};

/// The error of [`FieldNames`]: it only ever stops the parse.
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field names read")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

/// A deserializer that records the field names a struct asks for, and stops.
struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = Stop;

    fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: de::Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], _: V) -> Result<V::Value, Stop> {
        *self.0 = Some(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The keys `T` accepts, if it is a plain struct.
fn fields_of<T: for<'de> Deserialize<'de>>() -> Option<&'static [&'static str]> {
    let mut fields = None;
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

/// `path.key: unknown key …` for each key under `path` that `T` does not accept.
pub fn unknown_keys<T: for<'de> Deserialize<'de>>(figment: &Figment, path: &str) -> Vec<String> {
    let (Some(fields), Ok(present)) = (fields_of::<T>(), figment.focus(path).extract::<BTreeMap<String, Value>>()) else { return Vec::new() };
    present.keys().filter(|k| !fields.contains(&k.as_str())).map(|k| format!("{path}.{k}: unknown key; expected one of {} (remove it or fix its spelling)", fields.join(", "))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Section {
        size: u32,
        name: String,
    }

    #[test]
    fn keys_a_struct_does_not_accept_are_named() {
        let figment = Figment::from(figment::providers::Serialized::defaults(serde_json::json!({"s": {"size": "big", "nmae": "x"}})));
        assert_eq!(unknown_keys::<Section>(&figment, "s"), vec!["s.nmae: unknown key; expected one of size, name (remove it or fix its spelling)".to_string()]);
        assert_eq!(fields_of::<u32>(), None);
    }
}
