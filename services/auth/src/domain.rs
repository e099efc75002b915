//! Validated user input: each type can only hold an acceptable value.

use finflow_platform::ApiError;
use finflow_platform::text::{self, Documented, WHITE_SPACE};
use secrecy::{ExposeSecret, SecretString};
use utoipa::openapi::schema::ObjectBuilder;

/// Shortest password accepted (NIST SP 800-63B asks for at least 8; we ask for 10).
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted: Argon2 takes any length, but an unbounded one is a DoS lever.
pub const MAX_PASSWORD_CHARS: usize = 128;

/// A password that meets the policy, kept secret.
pub struct Password(SecretString);

impl Password {
    /// A sign-up's `password`.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        Self::parse_field("password", raw)
    }

    /// The password given as `field`, which errors name.
    pub fn parse_field(field: &str, raw: &str) -> Result<Self, ApiError> {
        let chars = raw.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
            return Err(ApiError::invalid_field(
                field,
                format!("{field} must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        if raw.chars().all(|c| raw.starts_with(c)) {
            return Err(ApiError::invalid_field(
                field,
                format!("{field} must not repeat one character"),
            ));
        }
        Ok(Self(SecretString::from(raw.to_owned())))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl Documented for Password {
    fn documented() -> ObjectBuilder {
        text::described(
            "10 to 128 characters, not all the same character.",
            r"^(?!([\s\S])\1*$)[^\x00]*$".to_owned(),
            "correct horse battery",
        )
        .min_length(Some(MIN_PASSWORD_CHARS))
        .max_length(Some(MAX_PASSWORD_CHARS))
    }
}

/// Longest full name accepted, in characters, padding included.
const MAX_FULL_NAME_CHARS: usize = 100;

/// The control characters (`char::is_control`, Unicode Cc), as the inside of a regex class.
const CONTROL: &str = r"\x00-\x1F\x7F-\x9F";

/// A person's name as they write it: 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullName(String);

impl FullName {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let name = text::trimmed("full_name", raw, MAX_FULL_NAME_CHARS)?;
        if name.chars().any(char::is_control) {
            return Err(ApiError::invalid_field(
                "full_name",
                "full_name must not contain control characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Documented for FullName {
    fn documented() -> ObjectBuilder {
        text::described(
            "At most 100 characters, not all whitespace, no control characters (the name is\n\
             stored trimmed).",
            format!(r"^[{WHITE_SPACE}]*[^{CONTROL}]*[^{WHITE_SPACE}{CONTROL}][^{CONTROL}]*[{WHITE_SPACE}]*$"),
            "Ada Lovelace",
        )
        .min_length(Some(1))
        .max_length(Some(MAX_FULL_NAME_CHARS))
    }
}

/// A phone number in E.164 form: `+` and 8 to 15 digits. Spaces, dashes and
/// parentheses are accepted on input and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let invalid = || {
            ApiError::invalid_field(
                "phone",
                "phone must be in international form, like +14155550123",
            )
        };
        let compact: String = raw
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
            .collect();
        let digits = compact.strip_prefix('+').ok_or_else(invalid)?;
        if !(8..=15).contains(&digits.len())
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(invalid());
        }
        Ok(Self(compact))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Documented for Phone {
    fn documented() -> ObjectBuilder {
        text::described(
            "E.164: `+`, then 8 to 15 digits not starting with 0; spaces, `-`, `(` and `)`\n\
             anywhere are accepted and removed.",
            format!(
                r"^[{WHITE_SPACE}]*[ ()-]*\+[ ()-]*[1-9]([ ()-]*[0-9]){{7,14}}[ ()-]*[{WHITE_SPACE}]*$"
            ),
            "+14155550123",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn weak_passwords_are_refused() {
        for p in ["", "short", "aaaaaaaaaaaa", &"x".repeat(129)] {
            assert!(Password::parse(p).is_err(), "{p:?}");
        }
        assert!(Password::parse("correct horse battery").is_ok());
    }

    #[test]
    fn phones_are_normalized_to_e164() {
        assert_eq!(
            Phone::parse(" +1 (415) 555-0123 ").unwrap().as_str(),
            "+14155550123"
        );
        for p in [
            "4155550123",
            "+0123456789",
            "+12",
            "+1415555012345678",
            "+1415abc0123",
        ] {
            assert!(Phone::parse(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            FullName::parse("  Ada Lovelace ").unwrap().as_str(),
            "Ada Lovelace"
        );
        assert!(FullName::parse("   ").is_err());
        assert!(FullName::parse("a\u{0}b").is_err());
        assert!(FullName::parse(&"é".repeat(101)).is_err());
        assert!(FullName::parse(&"é".repeat(100)).is_ok());
    }

    fn documented<T: Documented>() -> impl Fn(&str) -> bool {
        text::matcher(&text::schema::<T>())
    }

    /// Text made of what the rules tell apart: letters and digits, the phone's `+` and
    /// separators, white space that is and is not a control character, other control
    /// characters; mostly the first, so that many are valid.
    fn tricky_text(max: usize) -> impl Strategy<Value = String> {
        let chars = prop_oneof![
            12 => prop::sample::select(vec!['a', 'é', '0', '1', '9']),
            4 => prop::sample::select(vec!['+', ' ', '-', '(', ')', '\t', '\u{a0}', '\u{3000}']),
            1 => prop::sample::select(vec!['\n', '\u{85}', '\u{1680}', '\u{2028}', '\u{0}', '\u{1}', '\u{7f}', '\u{9f}', '\u{200b}']),
        ];
        prop::collection::vec(chars, 0..=max).prop_map(String::from_iter)
    }

    /// A valid E.164 number written as people write it: separators between its
    /// characters and white space around it, now and then with a character dropped,
    /// doubled or put in place of another.
    fn written_phone() -> impl Strategy<Value = String> {
        let separators = prop::collection::vec(
            prop::sample::select(vec!["", "", "", " ", "-", "(", ")", " (", ") "]),
            17,
        );
        let pad = prop::sample::select(vec!["", " ", "\t", "\u{a0}", "\u{3000}"]);
        let slip = (
            0_usize..20,
            prop::sample::select(vec!["", "", "0", "+", "a", "\n", "  "]),
        );
        (1_u8..10, "[0-9]{7,14}", separators, pad.clone(), pad, slip).prop_map(
            |(first, rest, separators, before, after, (at, slip))| {
                let mut chars: Vec<String> = format!("+{first}{rest}")
                    .chars()
                    .zip(separators)
                    .map(|(c, s)| format!("{c}{s}"))
                    .collect();
                if at < chars.len() && !slip.is_empty() {
                    chars[at] = slip.to_owned();
                }
                format!("{before}{}{after}", chars.concat())
            },
        )
    }

    proptest! {
        #[test]
        fn the_documented_full_name_takes_what_parse_takes(
            // Short, or about the limit.
            s in prop_oneof![Just(0..=6_usize), Just(97..=103_usize)]
                .prop_flat_map(|lengths| prop::collection::vec(
                    prop_oneof![
                        40 => prop::sample::select(vec!['a', 'é', ' ', '0']),
                        1 => prop::sample::select(vec!['\t', '\n', '\u{85}', '\u{a0}', '\u{1680}', '\u{2028}', '\u{3000}', '\u{0}', '\u{1}', '\u{7f}', '\u{9f}', '\u{200b}']),
                    ],
                    lengths,
                ).prop_map(String::from_iter))
        ) {
            prop_assert_eq!(documented::<FullName>()(&s), FullName::parse(&s).is_ok(), "{:?}", s);
        }

        #[test]
        fn the_documented_phone_takes_what_parse_takes(s in tricky_text(24)) {
            prop_assert_eq!(documented::<Phone>()(&s), Phone::parse(&s).is_ok(), "{:?}", s);
        }

        #[test]
        fn the_documented_phone_takes_what_parse_takes_as_people_write_it(s in written_phone()) {
            prop_assert_eq!(documented::<Phone>()(&s), Phone::parse(&s).is_ok(), "{:?}", s);
        }

        #[test]
        fn every_e164_number_parses_to_itself(first in 1_u8..10, rest in "[0-9]{7,14}") {
            let number = format!("+{first}{rest}");
            let parsed = Phone::parse(&number).unwrap();
            prop_assert_eq!(parsed.as_str(), number.as_str());
        }

        #[test]
        fn a_parsed_password_is_never_outside_the_policy(p in "\\PC{0,140}") {
            if Password::parse(&p).is_ok() {
                let n = p.chars().count();
                prop_assert!((MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n));
            }
        }
    }
}
