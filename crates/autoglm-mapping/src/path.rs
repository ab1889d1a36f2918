//! Dot-separated source paths into nested objects.

use serde_json::Value;

use autoglm_core::Row;

/// A parsed source path: `address.city` → `["address", "city"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourcePath {
    segments: Vec<String>,
    /// The path as written, for messages.
    text: String,
}

impl SourcePath {
    /// Parses `a.b\.c` → `["a", "b.c"]`. `\\` is a backslash; any other escape, an empty
    /// segment or a trailing backslash is an error.
    pub(crate) fn parse(text: &str) -> Result<SourcePath, String> {
        let mut segments = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('.' | '\\')) => current.push(e),
                    Some(other) => {
                        return Err(format!(
                            "unknown escape `\\{other}`: only `\\.` and `\\\\` are allowed"
                        ));
                    }
                    None => return Err("ends with a lone `\\`".to_owned()),
                },
                '.' => {
                    if current.is_empty() {
                        return Err(format!("empty segment in `{text}`"));
                    }
                    segments.push(std::mem::take(&mut current));
                }
                c => current.push(c),
            }
        }
        if current.is_empty() {
            return Err(if text.is_empty() {
                "the path is empty".to_owned()
            } else {
                format!("empty segment in `{text}`")
            });
        }
        segments.push(current);
        Ok(SourcePath {
            segments,
            text: text.to_owned(),
        })
    }

    /// The top-level field the path starts at.
    pub(crate) fn head(&self) -> &str {
        self.segments.first().map_or("", String::as_str)
    }

    /// Whether the path names a top-level field.
    pub(crate) fn is_top_level(&self) -> bool {
        self.segments.len() == 1
    }

    /// The path as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The segments joined with `.` without escapes, to compare with nested names a schema lists.
    pub(crate) fn dotted(&self) -> String {
        self.segments.join(".")
    }

    /// The value at this path, `None` when a segment is missing or a parent is not an object.
    pub(crate) fn lookup<'a>(&self, row: &'a Row) -> Option<&'a Value> {
        let (first, rest) = self.segments.split_first()?;
        let mut value = row.get(first)?;
        for segment in rest {
            value = value.as_object()?.get(segment)?;
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dots_split_and_escaped_dots_do_not() {
        let p = SourcePath::parse(r"a.b\.c.d\\").expect("valid");
        assert_eq!(p.segments, ["a", "b.c", r"d\"]);
        assert_eq!(p.head(), "a");
        assert!(!p.is_top_level());
        assert!(SourcePath::parse("plain").expect("valid").is_top_level());
    }

    #[test]
    fn malformed_paths_are_rejected() {
        for bad in ["", ".a", "a.", "a..b", r"a\x", "a\\"] {
            assert!(SourcePath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lookup_walks_nested_objects_only() {
        let row = json!({"address": {"city": "上海", "geo": {"lat": 31.2}}, "n": 1, "a.b": 2});
        let row = row.as_object().expect("object");
        let get = |p: &str| SourcePath::parse(p).expect("valid").lookup(row).cloned();
        assert_eq!(get("address.city"), Some(json!("上海")));
        assert_eq!(get("address.geo.lat"), Some(json!(31.2)));
        assert_eq!(get(r"a\.b"), Some(json!(2)));
        assert_eq!(get("address.zip"), None);
        assert_eq!(get("n.x"), None);
        assert_eq!(get("missing"), None);
    }
}
