//! Recipe values a user may write the short way: a path where a table with a `path` key is the
//! full form (`teacher = "model.gguf"` for `teacher = { path = "model.gguf" }`), and one such
//! value where a list is expected (`sources = "a.jsonl"`). The table form keeps its own precise
//! errors (unknown key, missing field); anything else is one error saying what is accepted —
//! never serde's "did not match any variant" nor a Rust type name.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A `T` written as a path (`T::from(path)`) or as its table.
pub fn path_or_table<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + From<String>,
{
    d.deserialize_any(One(PhantomData))
}

/// A list of `T`, each a path or a table; a single path or table is a list of one.
pub fn paths_or_tables<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + From<String>,
{
    d.deserialize_any(Many(PhantomData))
}

struct One<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de> + From<String>> Visitor<'de> for One<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a path (a string) or a table with `path`")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        Ok(T::from(s.to_string()))
    }

    fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(m))
    }
}

struct Many<T>(PhantomData<T>);

/// One element of a list, in either form.
struct Element<T>(T);

impl<'de, T: Deserialize<'de> + From<String>> Deserialize<'de> for Element<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        path_or_table(d).map(Element)
    }
}

impl<'de, T: Deserialize<'de> + From<String>> Visitor<'de> for Many<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a path, a table with `path`, or a list of them")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<T>, E> {
        Ok(vec![T::from(s.to_string())])
    }

    fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Vec<T>, A::Error> {
        Ok(vec![T::deserialize(de::value::MapAccessDeserializer::new(m))?])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(Element(t)) = s.next_element::<Element<T>>()? {
            out.push(t);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Src {
        path: String,
        #[serde(default)]
        format: Option<String>,
    }

    impl From<String> for Src {
        fn from(path: String) -> Self {
            Src { path, format: None }
        }
    }

    #[derive(Debug, Deserialize)]
    struct Doc {
        #[serde(deserialize_with = "super::path_or_table")]
        one: Src,
        #[serde(default, deserialize_with = "super::paths_or_tables")]
        many: Vec<Src>,
    }

    fn parse(s: &str) -> Result<Doc, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn short_and_full_forms_agree_and_errors_stay_precise() {
        let short = parse(r#"{"one": "a", "many": "b"}"#).unwrap();
        let full = parse(r#"{"one": {"path": "a"}, "many": [{"path": "b"}]}"#).unwrap();
        assert_eq!((short.one, short.many), (full.one, full.many));
        let mixed = parse(r#"{"one": "a", "many": ["b", {"path": "c", "format": "jsonl"}]}"#).unwrap();
        assert_eq!(mixed.many[1], Src { path: "c".into(), format: Some("jsonl".into()) });
        // The table form keeps its own errors; a wrong type says what is accepted.
        assert!(parse(r#"{"one": {"path": "a", "fromat": "x"}}"#).unwrap_err().contains("unknown field `fromat`"));
        let e = parse(r#"{"one": 3}"#).unwrap_err();
        assert!(e.contains("a path (a string) or a table with `path`") && !e.contains("Src"), "{e}");
    }
}
