//! Validated user input: each type can only hold an acceptable value.

use finflow_platform::ApiError;
use secrecy::{ExposeSecret, SecretString};

/// Shortest password accepted (NIST SP 800-63B asks for at least 8; we ask for 10).
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted: Argon2 takes any length, but an unbounded one is a DoS lever.
pub const MAX_PASSWORD_CHARS: usize = 128;

/// A password that meets the policy, kept secret.
pub struct Password(SecretString);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let chars = raw.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
            return Err(ApiError::invalid_field(
                "password",
                format!("password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        if raw.chars().all(|c| raw.starts_with(c)) {
            return Err(ApiError::invalid_field(
                "password",
                "password must not repeat one character",
            ));
        }
        Ok(Self(SecretString::from(raw.to_owned())))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A person's name as they write it: 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullName(String);

impl FullName {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let name = raw.trim();
        // The limit holds before trimming too: a name padded past it is refused, not cut.
        if name.is_empty() || raw.chars().count() > 100 {
            return Err(ApiError::invalid_field(
                "full_name",
                "full_name must be 1 to 100 characters",
            ));
        }
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

    proptest! {
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
