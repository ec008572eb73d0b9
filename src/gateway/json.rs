//! Editing the top level of a JSON object without re-parsing its values.
//!
//! A response body is mostly content the gateway must pass on untouched.
//! `RawObject` splits an object into its top-level keys and the raw text
//! of each value, so one field can be replaced or read while every other
//! value goes back out byte for byte, and without building a tree.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A key, borrowed from the input unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The top-level members of a JSON object, in order.
pub struct RawObject<'a> {
    members: Vec<(Key<'a>, &'a RawValue)>,
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(member) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(RawObject { members })
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

impl<'a> RawObject<'a> {
    pub fn parse(text: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(text)
    }

    /// Whether a top-level key appears more than once. Linear in the
    /// number of members (a client chooses it).
    pub fn has_repeated_keys(&self) -> bool {
        let keys = &self.members;
        if keys.len() <= 16 {
            return (1..keys.len()).any(|i| keys[..i].iter().any(|(k, _)| k.0 == keys[i].0 .0));
        }
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        keys.iter().any(|(k, _)| !seen.insert(k.0.as_ref()))
    }

    /// The raw value of a top-level key (the last one, if repeated).
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .rev()
            .find(|(k, _)| k.0 == key)
            .map(|(_, v)| *v)
    }

    /// Writes the object back out with `key` set to the JSON string
    /// `value` (added at the end if absent). Other members are copied as
    /// they came.
    pub fn to_vec_with_string(&self, key: &str, value: &str) -> Vec<u8> {
        let mut encoded = Vec::with_capacity(value.len() + 2);
        write_string(&mut encoded, value);
        let encoded = String::from_utf8(encoded).expect("JSON text is UTF-8");
        self.to_vec_with(&[(key, &encoded)])
    }

    /// Writes the object back out with each `(key, json_text)` member set to
    /// that raw JSON text (added at the end, in order, if absent). Other
    /// members are copied as they came. `json_text` must be valid JSON.
    pub fn to_vec_with(&self, edits: &[(&str, &str)]) -> Vec<u8> {
        self.to_vec_edited(edits, &[])
    }

    /// `to_vec_with`, leaving out every member (each one, if repeated) whose
    /// key is in `removed`.
    pub fn to_vec_edited(&self, edits: &[(&str, &str)], removed: &[&str]) -> Vec<u8> {
        let size: usize = self
            .members
            .iter()
            .map(|(k, v)| k.0.len() + v.get().len() + 4)
            .sum::<usize>()
            + edits
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>();
        let mut out = Vec::with_capacity(size + 2);
        out.push(b'{');
        let mut applied = vec![false; edits.len()];
        for (k, v) in &self.members {
            if removed.contains(&k.0.as_ref()) {
                continue;
            }
            if out.len() > 1 {
                out.push(b',');
            }
            write_string(&mut out, &k.0);
            out.push(b':');
            match edits.iter().position(|(key, _)| *key == k.0) {
                Some(i) => {
                    out.extend_from_slice(edits[i].1.as_bytes());
                    applied[i] = true;
                }
                None => out.extend_from_slice(v.get().as_bytes()),
            }
        }
        for ((key, value), done) in edits.iter().zip(applied) {
            if done {
                continue;
            }
            if out.len() > 1 {
                out.push(b',');
            }
            write_string(&mut out, key);
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'}');
        out
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn replaces_one_member_and_copies_the_rest_verbatim() {
        let text = br#"{"id":"x","model":"internal","n":1.50,"big":12345678901234567890,"s":"\u00e9\n","a":[1, 2]}"#;
        let obj = RawObject::parse(text).unwrap();
        let out = String::from_utf8(obj.to_vec_with_string("model", "p/public")).unwrap();
        assert_eq!(
            out,
            r#"{"id":"x","model":"p/public","n":1.50,"big":12345678901234567890,"s":"\u00e9\n","a":[1, 2]}"#
        );
    }

    #[test]
    fn adds_a_missing_member_and_handles_escaped_keys() {
        let obj = RawObject::parse(br#"{"k\"ey":true}"#).unwrap();
        let out: Value = serde_json::from_slice(&obj.to_vec_with_string("model", "m")).unwrap();
        assert_eq!(out, serde_json::json!({"k\"ey": true, "model": "m"}));
        assert!(
            RawObject::parse(b"{}")
                .unwrap()
                .to_vec_with_string("model", "m")
                == br#"{"model":"m"}"#
        );
    }

    #[test]
    fn sets_raw_members_in_place_or_at_the_end() {
        let obj = RawObject::parse(br#"{"usage":{"a":1},"x":2}"#).unwrap();
        let out = obj.to_vec_with(&[("x", "0.000000123"), ("cost", "{}")]);
        assert_eq!(out, br#"{"usage":{"a":1},"x":0.000000123,"cost":{}}"#);
    }

    #[test]
    fn tells_repeated_keys() {
        let once = RawObject::parse(br#"{"a":1,"b":{"a":2},"c":3}"#).unwrap();
        assert!(!once.has_repeated_keys());
        let twice = RawObject::parse(br#"{"a":1,"b":2,"\u0061":3}"#).unwrap();
        assert!(twice.has_repeated_keys());
        // Many members: each key once, then the first one again.
        let members: Vec<String> = (0..5000).map(|i| format!("\"k{i}\":{i}")).collect();
        let many = format!("{{{}}}", members.join(","));
        assert!(!RawObject::parse(many.as_bytes())
            .unwrap()
            .has_repeated_keys());
        let again = format!("{{{},\"k0\":1}}", members.join(","));
        assert!(RawObject::parse(again.as_bytes())
            .unwrap()
            .has_repeated_keys());
    }

    #[test]
    fn leaves_out_removed_members_each_time_they_appear() {
        let obj =
            RawObject::parse(br#"{"a":1,"gone":2,"b":[ 1.50 ],"gone":3,"model":"x"}"#).unwrap();
        let out = obj.to_vec_edited(&[("model", r#""y""#)], &["gone", "absent"]);
        assert_eq!(out, br#"{"a":1,"b":[ 1.50 ],"model":"y"}"#);
        let all = RawObject::parse(br#"{"gone":1}"#).unwrap();
        assert_eq!(all.to_vec_edited(&[], &["gone"]), b"{}");
        assert_eq!(
            all.to_vec_edited(&[("k", "true")], &["gone"]),
            br#"{"k":true}"#
        );
    }

    #[test]
    fn reads_members_and_rejects_non_objects() {
        let obj = RawObject::parse(br#"{"usage":{"prompt_tokens":3}}"#).unwrap();
        assert_eq!(obj.get("usage").unwrap().get(), r#"{"prompt_tokens":3}"#);
        assert!(obj.get("nope").is_none());
        assert!(RawObject::parse(b"[1]").is_err());
        assert!(RawObject::parse(b"{\"a\":").is_err());
    }
}
