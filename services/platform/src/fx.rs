//! Reference values: what a sum in any currency is worth in one reference currency, for
//! the rules that compare sums across currencies (tier limits, AML thresholds).
//!
//! A limit of 10,000 means 10,000 of the reference currency whatever the wallet holds:
//! compared raw, 10,000 CLF (about 400,000 USD) would pass a 10,000 threshold, and
//! 10,000 JPY would meet it. Rates are configuration (`FX_RATES`), kept by whoever runs
//! the platform; they never convert money: no ledger entry is ever a converted amount.
//! A currency without a rate is not supported: money in it is refused rather than
//! valued at a guess.

use std::collections::HashMap;

use clap::Args;
use rust_decimal::{Decimal, RoundingStrategy};

use crate::config::Validate;
use crate::error::ApiError;
use crate::money::{Amount, Currency, Money};

/// Units of the reference currency (USD) one unit of each currency was worth, rounded,
/// in December 2026. Operators replace it with `FX_RATES` (a rate source of their own
/// writes the same form); stale rates only move limits, they never move money.
pub const DEFAULT_RATES: &str = "USD=1,EUR=1.16,GBP=1.33,CHF=1.25,JPY=0.0064,CAD=0.71,\
AUD=0.65,NZD=0.57,CNY=0.14,HKD=0.128,SGD=0.77,SEK=0.105,NOK=0.098,DKK=0.155,PLN=0.27,\
CZK=0.048,HUF=0.003,INR=0.0112,BRL=0.18,MXN=0.054,ZAR=0.057,KRW=0.00068,TRY=0.024,\
ILS=0.30,AED=0.2723,SAR=0.2667,BHD=2.6596,KWD=3.26,OMR=2.6008,JOD=1.4104,TND=0.34,\
CLP=0.00106,CLF=41,ISK=0.0079";

/// The reference currency and the rates, each entry parsed once, at start-up.
#[derive(Debug, Clone, Args)]
pub struct FxConfig {
    /// The currency limits and thresholds are stated in.
    #[arg(long, env = "FX_REFERENCE_CURRENCY", default_value = "USD",
          value_parser = |code: &str| Currency::parse(code.trim()))]
    pub fx_reference_currency: Currency,
    /// `CODE=rate,...`: units of the reference currency one unit of CODE is worth. Money
    /// in a currency not listed is refused.
    // The whole table is one value (a qualified `Vec` is not clap's repeated argument),
    // so that empty entries, a trailing comma, are skipped rather than refused.
    #[arg(long, env = "FX_RATES", default_value = DEFAULT_RATES, value_parser = Rate::list)]
    pub fx_rates: ::std::vec::Vec<Rate>,
}

impl FxConfig {
    pub fn rates(&self) -> Result<Rates, String> {
        Rates::new(self.fx_reference_currency, &self.fx_rates)
    }
}

/// One `CODE=rate` entry of `FX_RATES`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub currency: Currency,
    /// Units of the reference currency one unit of `currency` is worth; positive.
    pub per_unit: Decimal,
}

impl Rate {
    /// A comma-separated table, empty entries skipped.
    pub fn list(table: &str) -> Result<Vec<Self>, String> {
        crate::config::pairs(table, "CODE=rate", Self::of)
    }

    fn of(code: &str, rate: &str) -> Result<Self, String> {
        let currency = Currency::parse(code).map_err(|e| e.to_string())?;
        let per_unit = Decimal::from_str_exact(rate)
            .ok()
            .filter(|r| r.is_sign_positive() && !r.is_zero())
            .ok_or_else(|| format!("the rate of {code} is not a positive decimal"))?;
        Ok(Self { currency, per_unit })
    }
}

impl Validate for FxConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if let Err(e) = self.rates() {
            errors.push(e);
        }
    }
}

/// Reference values of the supported currencies.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    reference: Currency,
    per_unit: HashMap<Currency, Decimal>,
}

impl Rates {
    /// `reference` and a table `CODE=rate,...` ([`Rates::new`]).
    pub fn parse(reference: &str, table: &str) -> Result<Self, String> {
        let reference =
            Currency::parse(reference.trim()).map_err(|e| format!("FX_REFERENCE_CURRENCY: {e}"))?;
        let rates = Rate::list(table).map_err(|e| format!("FX_RATES: {e}"))?;
        Self::new(reference, &rates)
    }

    /// `reference` and one rate per currency; the reference must be listed at 1.
    pub fn new(reference: Currency, rates: &[Rate]) -> Result<Self, String> {
        let mut per_unit = HashMap::new();
        for rate in rates {
            if per_unit.insert(rate.currency, rate.per_unit).is_some() {
                return Err(format!("FX_RATES: {} is listed twice", rate.currency));
            }
        }
        if per_unit.get(&reference) != Some(&Decimal::ONE) {
            return Err(format!(
                "FX_RATES must list the reference currency {reference} at 1"
            ));
        }
        Ok(Self {
            reference,
            per_unit,
        })
    }

    pub fn reference(&self) -> Currency {
        self.reference
    }

    pub fn supports(&self, currency: Currency) -> bool {
        self.per_unit.contains_key(&currency)
    }

    /// `400 VALIDATION_ERROR` on `currency` (reason `currency_not_supported`) for a
    /// currency without a rate.
    pub fn require(&self, currency: Currency) -> Result<(), ApiError> {
        if self.supports(currency) {
            return Ok(());
        }
        Err(ApiError::invalid_field(
            "currency",
            format!("{currency} is not supported: FinFlow has no reference rate for it"),
        )
        .with_details(serde_json::json!({
            "field": "currency",
            "reason": "currency_not_supported",
        })))
    }

    /// Narrows `doc`'s `CurrencyCode` schema to the currencies with a rate: the ones a
    /// service that values money takes (any other is 400 `currency_not_supported`).
    pub fn document(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::ObjectBuilder;
        use utoipa::openapi::schema::Type;
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        let Some(schema) = components.schemas.get_mut("CurrencyCode") else {
            return;
        };
        let mut codes: Vec<&str> = self.per_unit.keys().map(|c| c.code()).collect();
        codes.sort_unstable();
        *schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "An ISO 4217 currency code FinFlow holds money in (one with a reference rate), upper case",
            ))
            .enum_values(Some(codes))
            .examples([self.reference.code()])
            .into();
    }

    /// What `money` is worth in the reference currency, rounded up to storage precision
    /// (a rule never sees a sum as smaller than it is); a value past what storage holds
    /// is the largest storable amount, which exceeds every limit.
    pub fn value(&self, money: Money) -> Result<Amount, ApiError> {
        self.require(money.currency())?;
        let rate = self.per_unit[&money.currency()];
        let value = money
            .amount()
            .decimal()
            .checked_mul(rate)
            .map(|v| v.round_dp_with_strategy(4, RoundingStrategy::AwayFromZero));
        Ok(value
            .and_then(|v| Amount::from_decimal(v).ok())
            .unwrap_or(Amount::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates() -> Rates {
        Rates::parse("USD", DEFAULT_RATES).unwrap()
    }

    fn money(amount: &str, currency: &str) -> Money {
        Money::parse(amount, currency).unwrap()
    }

    #[test]
    fn the_default_table_parses_and_values_the_reference_at_par() {
        let r = rates();
        assert_eq!(r.reference().code(), "USD");
        assert_eq!(
            r.value(money("12.34", "USD")).unwrap(),
            Amount::parse("12.34").unwrap()
        );
    }

    #[test]
    fn a_unit_of_account_is_worth_far_more_than_its_count() {
        // The sum the AML threshold missed when amounts were compared raw.
        let value = rates().value(money("10000", "CLF")).unwrap();
        assert_eq!(value, Amount::parse("410000").unwrap());
        assert!(rates().value(money("10000", "JPY")).unwrap() < Amount::parse("100").unwrap());
    }

    #[test]
    fn values_round_up_never_down() {
        // 0.001 KRW is 0.00000068 USD: still more than nothing.
        let r = Rates::parse("USD", "USD=1,KRW=0.00068").unwrap();
        assert_eq!(
            r.value(money("1", "KRW")).unwrap(),
            Amount::parse("0.0007").unwrap()
        );
    }

    #[test]
    fn an_unlisted_currency_is_refused_not_guessed() {
        let err = rates().value(money("1", "AFN")).unwrap_err();
        assert_eq!(err.details.unwrap()["reason"], "currency_not_supported");
    }

    #[test]
    fn a_document_offers_exactly_the_currencies_with_a_rate() {
        use utoipa::ToSchema;
        let mut doc = utoipa::openapi::OpenApiBuilder::new()
            .components(Some(
                utoipa::openapi::ComponentsBuilder::new()
                    .schema(
                        Currency::name(),
                        <Currency as utoipa::PartialSchema>::schema(),
                    )
                    .build(),
            ))
            .build();
        Rates::parse("USD", "USD=1,EUR=1.16,JPY=0.0064")
            .unwrap()
            .document(&mut doc);
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            json["components"]["schemas"]["CurrencyCode"]["enum"],
            serde_json::json!(["EUR", "JPY", "USD"])
        );
    }

    #[test]
    fn the_settings_are_parsed_entry_by_entry_and_checked_as_a_table() {
        use clap::Parser;
        #[derive(Parser)]
        struct Fx {
            #[command(flatten)]
            fx: FxConfig,
        }
        let load = |rates: &str| Fx::try_parse_from(["fx", "--fx-rates", rates]);
        let fx = load("USD=1, EUR=1.16,").unwrap().fx;
        assert_eq!(fx.fx_reference_currency.to_string(), "USD");
        assert_eq!(fx.fx_rates.len(), 2);
        assert_eq!(
            fx.rates().unwrap(),
            Rates::parse("USD", "USD=1,EUR=1.16").unwrap()
        );
        assert_eq!(
            Fx::try_parse_from(["fx"]).unwrap().fx.rates().unwrap(),
            rates()
        );
        let Err(refused) = load("USD=1,EUR=abc") else {
            panic!("a bad rate was accepted")
        };
        assert!(refused.to_string().contains("FX_RATES"), "{refused}");
        assert!(refused.to_string().contains("EUR"), "{refused}");
        let twice = load("USD=1,USD=1").unwrap().fx;
        assert_eq!(twice.rates().unwrap_err(), "FX_RATES: USD is listed twice");
    }

    #[test]
    fn bad_tables_are_refused_at_start() {
        for (reference, table) in [
            ("USD", "EUR=1.1"),
            ("USD", "USD=1,EUR=0"),
            ("USD", "USD=1,EUR=-1"),
            ("USD", "USD=1,EUR"),
            ("USD", "USD=1,USD=1"),
            ("USD", "USD=2"),
            ("XYZ", "USD=1"),
            ("USD", "USD=1,EUR=1e3"),
        ] {
            assert!(Rates::parse(reference, table).is_err(), "{table}");
        }
    }

    #[test]
    fn a_value_past_storage_exceeds_every_limit() {
        let r = Rates::parse("USD", "USD=1,CLF=1000000").unwrap();
        assert_eq!(
            r.value(money("9999999999999999", "CLF")).unwrap(),
            Amount::MAX
        );
    }
}
