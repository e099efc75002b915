//! Money without floats.
//!
//! Three types, each valid by construction:
//! - [`Currency`]: an ISO 4217 code that has minor units (so `XAU` and friends are out).
//! - [`Amount`]: a decimal quantity that fits the storage type `NUMERIC(20,4)`. On the
//!   wire it is only ever a JSON *string* (`"1500.00"`): a JSON number is refused, because
//!   serde would have read it through an `f64` first.
//! - [`Money`]: an amount in a currency whose minor units it respects (`"10.001"` USD
//!   is refused, `"10"` JPY is fine). It serializes as `{"amount": "10.00", "currency": "USD"}`
//!   with exactly the currency's decimals.
//!
//! Arithmetic is checked and refuses to mix currencies.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Digits allowed after the point in storage (`NUMERIC(20,4)`).
pub const STORAGE_SCALE: u32 = 4;
/// Digits allowed before the point in storage (`NUMERIC(20,4)` leaves 16).
pub const STORAGE_INTEGER_DIGITS: u32 = 16;

/// Why a value is not money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("`{0}` is not a decimal number (expected digits with an optional `.` and sign)")]
    NotADecimal(String),
    #[error("`{0}` has more than {STORAGE_SCALE} decimal places")]
    TooPrecise(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
    #[error("`{code}` allows {minor_units} decimal places, `{amount}` has more")]
    TooManyDecimals {
        amount: String,
        code: &'static str,
        minor_units: u32,
    },
    #[error("`{0}` is not an ISO 4217 currency code with minor units")]
    UnknownCurrency(String),
    #[error("the amount must be greater than zero")]
    NotPositive,
    #[error("cannot combine {0} and {1}")]
    CurrencyMismatch(&'static str, &'static str),
    #[error("the result does not fit in storage")]
    Overflow,
}

/// An ISO 4217 currency with minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// Parses a three-letter upper-case ISO 4217 code.
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        let unknown = || MoneyError::UnknownCurrency(code.chars().take(16).collect());
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(unknown());
        }
        let currency = iso_currency::Currency::from_code(code).ok_or_else(unknown)?;
        // Funds, metals and "no currency" codes have no minor units and no place in a wallet.
        currency.exponent().ok_or_else(unknown)?;
        Ok(Self(currency))
    }

    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// Decimal places of the currency's minor unit (2 for USD, 0 for JPY, 3 for BHD).
    pub fn minor_units(self) -> u32 {
        u32::from(self.0.exponent().unwrap_or(0))
    }
}

impl Currency {
    /// Every code [`Currency::parse`] accepts, in order.
    pub fn codes() -> &'static [&'static str] {
        static CODES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
        CODES.get_or_init(|| {
            let letters = b'A'..=b'Z';
            letters
                .clone()
                .flat_map(|a| letters.clone().map(move |b| (a, b)))
                .flat_map(|(a, b)| (b'A'..=b'Z').map(move |c| [a, b, c]))
                .filter_map(|code| {
                    let code = std::str::from_utf8(&code).ok()?;
                    Currency::parse(code).ok().map(Currency::code)
                })
                .collect()
        })
    }
}

/// In OpenAPI documents a currency is a string, one of the codes it accepts, so a
/// document states exactly what [`Currency::parse`] takes.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "An ISO 4217 currency code with minor units, upper case",
            ))
            .enum_values(Some(Currency::codes().iter().copied()))
            .examples(["USD"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Currency {
    fn name() -> std::borrow::Cow<'static, str> {
        "CurrencyCode".into()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Self::parse(&code).map_err(serde::de::Error::custom)
    }
}

/// A decimal quantity of money that fits `NUMERIC(20,4)`; it may be zero or negative
/// (a balance delta), see [`Money::positive`] for amounts a client asks to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(Decimal);

impl Amount {
    pub const ZERO: Self = Self(Decimal::ZERO);
    /// The largest amount storage holds: 9999999999999999.9999.
    pub const MAX: Self = Self(Decimal::from_parts(
        1_661_992_959,
        1_808_227_885,
        5,
        false,
        4,
    ));

    /// Parses `-?digits(.digits)?`: no exponent, no `+`, no separators, no spaces.
    pub fn parse(s: &str) -> Result<Self, MoneyError> {
        let not_decimal = || MoneyError::NotADecimal(s.chars().take(40).collect());
        let digits = s.strip_prefix('-').unwrap_or(s);
        let (int, frac) = match digits.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (digits, None),
        };
        let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
            return Err(not_decimal());
        }
        if frac.is_some_and(|f| f.trim_end_matches('0').len() > STORAGE_SCALE as usize) {
            return Err(MoneyError::TooPrecise(s.to_owned()));
        }
        if int.trim_start_matches('0').len() > STORAGE_INTEGER_DIGITS as usize {
            return Err(MoneyError::TooLarge(s.chars().take(40).collect()));
        }
        // Padding zeros are dropped before the decimal is read: they count against its
        // 28 digits, and an amount is the same however it is padded.
        let int = int.trim_start_matches('0');
        let frac = frac.map_or("", |f| f.trim_end_matches('0'));
        let canonical = format!(
            "{}{}.{}",
            if s.starts_with('-') { "-" } else { "" },
            if int.is_empty() { "0" } else { int },
            if frac.is_empty() { "0" } else { frac }
        );
        let value = Decimal::from_str_exact(&canonical).map_err(|_| not_decimal())?;
        Self::from_decimal(value)
    }

    /// Accepts a decimal that fits storage (as read from `NUMERIC(20,4)`).
    pub fn from_decimal(value: Decimal) -> Result<Self, MoneyError> {
        let value = value.normalize();
        if value.scale() > STORAGE_SCALE {
            return Err(MoneyError::TooPrecise(value.to_string()));
        }
        if value.abs() >= Decimal::from(10_i64.pow(STORAGE_INTEGER_DIGITS)) {
            return Err(MoneyError::TooLarge(value.to_string()));
        }
        Ok(Self(value))
    }

    pub fn decimal(self) -> Decimal {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    pub fn is_positive(self) -> bool {
        self.0.is_sign_positive() && !self.0.is_zero()
    }

    pub fn is_negative(self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }

    pub fn checked_add(self, other: Self) -> Result<Self, MoneyError> {
        let sum = self.0.checked_add(other.0).ok_or(MoneyError::Overflow)?;
        Self::from_decimal(sum).map_err(|_| MoneyError::Overflow)
    }

    pub fn checked_sub(self, other: Self) -> Result<Self, MoneyError> {
        let diff = self.0.checked_sub(other.0).ok_or(MoneyError::Overflow)?;
        Self::from_decimal(diff).map_err(|_| MoneyError::Overflow)
    }

    #[must_use]
    pub fn negate(self) -> Self {
        Self(-self.0)
    }

    /// Decimal places actually used (`10.50` uses 1).
    pub fn decimals(self) -> u32 {
        self.0.normalize().scale()
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Amount {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only a string: a JSON number would already have been rounded through an f64.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal amount as a string, like \"1500.00\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Amount, E> {
                Amount::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(feature = "sqlx")]
impl sqlx::Type<sqlx::Postgres> for Amount {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Decimal as sqlx::Type<sqlx::Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <Decimal as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

#[cfg(feature = "sqlx")]
impl sqlx::postgres::PgHasArrayType for Amount {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        <Decimal as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

#[cfg(feature = "sqlx")]
impl sqlx::Encode<'_, sqlx::Postgres> for Amount {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <Decimal as sqlx::Encode<'_, sqlx::Postgres>>::encode_by_ref(&self.0, buf)
    }
}

#[cfg(feature = "sqlx")]
impl sqlx::Decode<'_, sqlx::Postgres> for Amount {
    fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        let d = <Decimal as sqlx::Decode<'_, sqlx::Postgres>>::decode(value)?;
        Ok(Self::from_decimal(d)?)
    }
}

#[cfg(feature = "sqlx")]
impl sqlx::Type<sqlx::Postgres> for Currency {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<sqlx::Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

#[cfg(feature = "sqlx")]
impl sqlx::postgres::PgHasArrayType for Currency {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

#[cfg(feature = "sqlx")]
impl sqlx::Encode<'_, sqlx::Postgres> for Currency {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<'_, sqlx::Postgres>>::encode_by_ref(&self.code(), buf)
    }
}

#[cfg(feature = "sqlx")]
impl sqlx::Decode<'_, sqlx::Postgres> for Currency {
    fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        let code = <&str as sqlx::Decode<'_, sqlx::Postgres>>::decode(value)?;
        Ok(Self::parse(code)?)
    }
}

/// An amount in a currency, within that currency's minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount: Amount,
    currency: Currency,
}

impl Money {
    /// Any amount (zero and negative included) that respects the currency's minor units.
    pub fn new(amount: Amount, currency: Currency) -> Result<Self, MoneyError> {
        if amount.decimals() > currency.minor_units() {
            return Err(MoneyError::TooManyDecimals {
                amount: amount.to_string(),
                code: currency.code(),
                minor_units: currency.minor_units(),
            });
        }
        Ok(Self { amount, currency })
    }

    /// An amount a client asks to move: strictly positive and within minor units.
    pub fn positive(amount: Amount, currency: Currency) -> Result<Self, MoneyError> {
        if !amount.is_positive() {
            return Err(MoneyError::NotPositive);
        }
        Self::new(amount, currency)
    }

    /// Parses an amount string and a currency code together.
    pub fn parse(amount: &str, currency: &str) -> Result<Self, MoneyError> {
        Self::new(Amount::parse(amount)?, Currency::parse(currency)?)
    }

    pub fn zero(currency: Currency) -> Self {
        Self {
            amount: Amount::ZERO,
            currency,
        }
    }

    pub fn amount(self) -> Amount {
        self.amount
    }

    pub fn currency(self) -> Currency {
        self.currency
    }

    pub fn checked_add(self, other: Self) -> Result<Self, MoneyError> {
        self.same_currency(other)?;
        Self::new(self.amount.checked_add(other.amount)?, self.currency)
    }

    pub fn checked_sub(self, other: Self) -> Result<Self, MoneyError> {
        self.same_currency(other)?;
        Self::new(self.amount.checked_sub(other.amount)?, self.currency)
    }

    fn same_currency(self, other: Self) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(
                self.currency.code(),
                other.currency.code(),
            ))
        }
    }

    /// The amount with exactly the currency's decimals: `"1500.00"` for USD, `"1500"` for JPY.
    pub fn amount_string(self) -> String {
        let mut d = self.amount.decimal();
        d.rescale(self.currency.minor_units());
        d.to_string()
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount_string(), self.currency)
    }
}

#[derive(Serialize, Deserialize)]
struct MoneyWire {
    amount: Amount,
    currency: Currency,
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Money", 2)?;
        st.serialize_field("amount", &self.amount_string())?;
        st.serialize_field("currency", &self.currency)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = MoneyWire::deserialize(d)?;
        Self::new(wire.amount, wire.currency).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_amount_is_the_largest_storage_holds() {
        assert_eq!(Amount::MAX, Amount::parse("9999999999999999.9999").unwrap());
    }

    #[test]
    fn padding_zeros_do_not_count_against_an_amounts_digits() {
        let padded = Amount::parse("00005349946498086050.73900000000000").unwrap();
        assert_eq!(padded, Amount::parse("5349946498086050.739").unwrap());
        assert_eq!(
            Amount::parse("-000.500").unwrap(),
            Amount::parse("-0.5").unwrap()
        );
        assert!(Amount::parse("0000").unwrap().decimal().is_zero());
    }

    #[test]
    fn the_documented_codes_are_exactly_those_parse_accepts() {
        let codes = Currency::codes();
        assert!(codes.contains(&"USD") && codes.contains(&"JPY") && codes.contains(&"BHD"));
        assert!(!codes.contains(&"XAU") && !codes.contains(&"XXX"));
        assert!(codes.iter().all(|c| Currency::parse(c).is_ok()));
        assert!(codes.len() > 150, "{}", codes.len());
    }
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    #[test]
    fn currencies_know_their_minor_units() {
        assert_eq!(usd().minor_units(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().minor_units(), 0);
        assert_eq!(Currency::parse("BHD").unwrap().minor_units(), 3);
    }

    #[test]
    fn unknown_lowercase_and_unitless_codes_are_refused() {
        for code in ["usd", "XXX", "XAU", "US", "USDT", "", "ZZZ"] {
            assert!(Currency::parse(code).is_err(), "{code} accepted");
        }
    }

    #[test]
    fn malformed_amounts_are_refused() {
        for s in [
            "", "-", ".", "1.", ".5", "+1", "1e3", "1_000", " 1", "1 ", "0x10", "NaN", "1,00",
            "--1",
        ] {
            assert!(Amount::parse(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn too_many_decimals_for_the_currency_are_refused() {
        assert!(matches!(
            Money::parse("10.001", "USD"),
            Err(MoneyError::TooManyDecimals { .. })
        ));
        assert!(Money::parse("10.5", "JPY").is_err());
        assert!(
            Money::parse("10.000", "USD").is_ok(),
            "trailing zeros are not precision"
        );
        assert!(Money::parse("10.001", "BHD").is_ok());
    }

    #[test]
    fn more_than_storage_precision_is_refused_even_before_the_currency() {
        assert!(matches!(
            Amount::parse("1.00001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Amount::parse("10000000000000000"),
            Err(MoneyError::TooLarge(_))
        ));
        assert!(Amount::parse("9999999999999999.9999").is_ok());
    }

    #[test]
    fn zero_and_negative_are_refused_where_positive_is_asked() {
        let zero = Amount::parse("0.00").unwrap();
        let negative = Amount::parse("-5").unwrap();
        assert_eq!(Money::positive(zero, usd()), Err(MoneyError::NotPositive));
        assert_eq!(
            Money::positive(negative, usd()),
            Err(MoneyError::NotPositive)
        );
        assert!(
            Money::new(negative, usd()).is_ok(),
            "a delta may be negative"
        );
    }

    #[test]
    fn json_numbers_are_refused_because_they_went_through_a_float() {
        let err = serde_json::from_str::<Amount>("0.1").unwrap_err();
        assert!(err.to_string().contains("string"), "{err}");
        assert!(serde_json::from_str::<Money>(r#"{"amount": 10, "currency": "USD"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Amount>(r#""0.1""#).unwrap(),
            Amount::parse("0.1").unwrap()
        );
    }

    #[test]
    fn money_serializes_with_the_currency_decimals() {
        let m = Money::parse("1500", "USD").unwrap();
        assert_eq!(
            serde_json::to_value(m).unwrap(),
            serde_json::json!({"amount": "1500.00", "currency": "USD"})
        );
        let yen = Money::parse("1500", "JPY").unwrap();
        assert_eq!(yen.amount_string(), "1500");
    }

    #[test]
    fn arithmetic_refuses_to_mix_currencies() {
        let a = Money::parse("1", "USD").unwrap();
        let b = Money::parse("1", "EUR").unwrap();
        assert!(matches!(
            a.checked_add(b),
            Err(MoneyError::CurrencyMismatch("USD", "EUR"))
        ));
    }

    #[test]
    fn arithmetic_past_storage_range_overflows_instead_of_wrapping() {
        let max = Amount::parse("9999999999999999.9999").unwrap();
        assert_eq!(
            max.checked_add(Amount::parse("0.0001").unwrap()),
            Err(MoneyError::Overflow)
        );
    }

    proptest! {
        #[test]
        fn every_valid_amount_round_trips_through_its_string(
            units in 0_i64..10_000_000_000_000_000, frac in 0_u32..10_000, neg: bool
        ) {
            let s = format!("{}{units}.{frac:04}", if neg { "-" } else { "" });
            let a = Amount::parse(&s).unwrap();
            prop_assert_eq!(Amount::parse(&a.to_string()).unwrap(), a);
            let json = serde_json::to_string(&a).unwrap();
            prop_assert_eq!(serde_json::from_str::<Amount>(&json).unwrap(), a);
        }

        #[test]
        fn money_with_more_decimals_than_the_currency_allows_is_refused(
            units in 0_u64..1_000_000_000, extra in 1_u32..10
        ) {
            // USD has 2 decimals: a non-zero third or fourth decimal must be refused.
            let s = format!("{units}.{:02}{extra}", units % 100);
            prop_assert!(Money::parse(&s, "USD").is_err());
        }

        #[test]
        fn money_in_minor_units_is_accepted_and_serializes_exactly(
            cents in 1_u64..1_000_000_000_000
        ) {
            let s = format!("{}.{:02}", cents / 100, cents % 100);
            let m = Money::parse(&s, "USD").unwrap();
            prop_assert!(Money::positive(m.amount(), m.currency()).is_ok());
            prop_assert_eq!(m.amount_string(), s);
        }

        #[test]
        fn adding_then_subtracting_gives_back_the_same_money(
            a in 0_u64..1_000_000_000_000, b in 0_u64..1_000_000_000_000
        ) {
            let ma = Money::parse(&format!("{}.{:02}", a / 100, a % 100), "USD").unwrap();
            let mb = Money::parse(&format!("{}.{:02}", b / 100, b % 100), "USD").unwrap();
            prop_assert_eq!(ma.checked_add(mb).unwrap().checked_sub(mb).unwrap(), ma);
        }
    }
}
