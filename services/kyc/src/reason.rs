//! The reason a compliance officer gives for a decision (a review, a revocation, an
//! alert cleared or flagged): checked once, documented beside its check.

use finflow_platform::ApiError;
use finflow_platform::text::{self, Documented, WHITE_SPACE};
use utoipa::openapi::schema::ObjectBuilder;

/// Longest reason, in characters, padding included.
const MAX_CHARS: usize = 500;

/// 1 to 500 characters, not all white space; kept trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        text::trimmed("reason", raw, MAX_CHARS).map(|r| Self(r.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Documented for Reason {
    /// NUL aside, which no request holds (the platform's `Json` refuses it).
    fn documented() -> ObjectBuilder {
        text::described(
            "1 to 500 characters, not all white space (stored trimmed).",
            format!(r"^[^\x00]*[^\x00{WHITE_SPACE}][^\x00]*$"),
            "confirmed with the customer",
        )
        .min_length(Some(1))
        .max_length(Some(MAX_CHARS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_reason_is_kept_trimmed_and_its_padding_counts_against_its_length() {
        assert_eq!(
            Reason::parse("  source of funds shown \n")
                .unwrap()
                .as_str(),
            "source of funds shown"
        );
        assert!(Reason::parse(" \u{3000}\t").is_err());
        assert!(Reason::parse(&"é".repeat(500)).is_ok());
        assert!(Reason::parse(&format!("{} ", "é".repeat(500))).is_err());
    }

    proptest! {
        #[test]
        fn the_documented_reason_takes_what_parse_takes(
            // Short, where all white space is likely, or about the limit.
            s in prop_oneof![Just(0..=6_usize), Just(496..=503_usize)].prop_flat_map(|lengths| {
                let chars = prop_oneof![
                    4 => Just('a'),
                    1 => prop::sample::select(vec![' ', '\t', '\n', '\u{85}', '\u{a0}', '\u{2028}', '\u{3000}', '\u{200b}', '\u{1}']),
                ];
                prop::collection::vec(chars, lengths).prop_map(String::from_iter)
            })
        ) {
            let documented = text::matcher(&text::schema::<Reason>());
            prop_assert_eq!(documented(&s), Reason::parse(&s).is_ok(), "{:?}", s);
        }
    }
}
