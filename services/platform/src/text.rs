//! Text fields' shared rules: text kept trimmed within a length, and the documented form
//! of a field whose newtype checks it, stated once beside its `parse` so that every
//! request taking the field shows the same schema.

use utoipa::openapi::Object;
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};

use crate::ApiError;

/// The characters `str::trim` removes (`char::is_whitespace`, Unicode White_Space), as
/// the inside of a regex class: the patterns of text a service trims are built on it.
pub const WHITE_SPACE: &str = r"\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// `raw` trimmed, if it has 1 to `max_chars` characters and is not all white space. The
/// padding counts: a text padded past the limit is refused, not cut.
pub fn trimmed<'a>(field: &str, raw: &'a str, max_chars: usize) -> Result<&'a str, ApiError> {
    let text = raw.trim();
    if text.is_empty() || raw.chars().count() > max_chars {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} must be 1 to {max_chars} characters, not all white space"),
        ));
    }
    Ok(text)
}

/// A text newtype whose rule the API documents.
pub trait Documented {
    /// What its `parse` takes, from [`described`], with lengths where the rule has them.
    fn documented() -> ObjectBuilder;
}

/// `T`'s schema, for `#[schema(schema_with = text::schema::<T>)]` (which takes the
/// description from here, not from the field's comment).
pub fn schema<T: Documented>() -> Object {
    T::documented().build()
}

/// [`schema`], or null: an optional field's.
pub fn schema_or_null<T: Documented>() -> Object {
    T::documented()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .build()
}

/// A string's description, pattern and example.
pub fn described(description: &str, pattern: String, example: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .examples([example])
}

/// A documented schema as a test reads it: its pattern and its lengths in characters.
#[cfg(feature = "testing")]
pub fn matcher(schema: &Object) -> impl Fn(&str) -> bool + use<> {
    let pattern = regex::Regex::new(schema.pattern.as_deref().expect("a pattern")).unwrap();
    let lengths = schema.min_length.unwrap_or(0)..=schema.max_length.unwrap_or(usize::MAX);
    move |s| pattern.is_match(s) && lengths.contains(&s.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_text_counts_its_padding_and_is_not_all_white_space() {
        assert_eq!(trimmed("reason", " ok\u{3000}", 5).unwrap(), "ok");
        assert!(trimmed("reason", " \t\u{a0}\u{2028}", 10).is_err());
        assert!(trimmed("reason", "", 10).is_err());
        assert!(trimmed("reason", "éééé", 4).is_ok());
        let padded = trimmed("reason", "éééé ", 4).unwrap_err();
        assert_eq!(padded.status(), axum::http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn white_space_is_what_trim_removes() {
        let class = regex::Regex::new(&format!("^[{WHITE_SPACE}]$")).unwrap();
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(
                class.is_match(c.encode_utf8(&mut [0; 4])),
                c.is_whitespace(),
                "{c:?}"
            );
        }
    }
}
