//! Tier limits: how much may leave a user's wallet per transaction and per day.

use std::str::FromStr;

use finflow_platform::identity::Tier;
use finflow_platform::{Amount, ApiError, ErrorCode};

/// One tier's limits, in units of the wallet's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub per_transaction: Amount,
    pub per_day: Amount,
}

impl Limit {
    /// `403 FORBIDDEN` (reason `tier_limit`) if `amount` exceeds either limit, counting
    /// what already left today.
    pub fn check(&self, amount: Amount, spent_today: Amount) -> Result<(), ApiError> {
        let refuse = |which: &str, limit: Amount| {
            ApiError::new(
                ErrorCode::Forbidden,
                format!("the amount exceeds your {which} limit of {limit}"),
            )
            .with_details(
                serde_json::json!({ "reason": "tier_limit", "limit": which, "value": limit }),
            )
        };
        if amount > self.per_transaction {
            return Err(refuse("per-transaction", self.per_transaction));
        }
        let total = spent_today
            .checked_add(amount)
            .map_err(|e| ApiError::internal(&e))?;
        if total > self.per_day {
            return Err(refuse("daily", self.per_day));
        }
        Ok(())
    }
}

/// Limits for every tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierLimits {
    pub bronze: Limit,
    pub silver: Limit,
    pub gold: Limit,
}

impl TierLimits {
    pub fn for_tier(&self, tier: Tier) -> Limit {
        match tier {
            Tier::Bronze => self.bronze,
            Tier::Silver => self.silver,
            Tier::Gold => self.gold,
        }
    }
}

impl FromStr for TierLimits {
    type Err = String;

    /// `bronze=1000/5000,silver=10000/50000,gold=100000/500000`: per transaction / per day.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let entries =
            finflow_platform::config::pairs(s, "tier=per_transaction/per_day", tier_limit)?;
        let mut found = [None, None, None];
        for (tier, limit) in entries {
            found[tier as usize] = Some(limit);
        }
        match found {
            [Some(bronze), Some(silver), Some(gold)] => Ok(Self {
                bronze,
                silver,
                gold,
            }),
            _ => Err("TIER_LIMITS must set bronze, silver and gold".to_owned()),
        }
    }
}

/// One `tier=per_transaction/per_day` entry of `TIER_LIMITS`.
fn tier_limit(tier: &str, limits: &str) -> Result<(Tier, Limit), String> {
    let tier = Tier::parse(tier).ok_or_else(|| format!("unknown tier `{tier}`"))?;
    let (tx, day) = limits
        .split_once('/')
        .ok_or_else(|| format!("`{limits}` is not per_transaction/per_day"))?;
    let amount = |v: &str| {
        Amount::parse(v.trim())
            .ok()
            .filter(|a| a.is_positive())
            .ok_or_else(|| format!("`{v}` is not a positive amount"))
    };
    let limit = Limit {
        per_transaction: amount(tx)?,
        per_day: amount(day)?,
    };
    if limit.per_transaction > limit.per_day {
        return Err(format!(
            "{} per transaction exceeds its daily limit",
            tier.as_str()
        ));
    }
    Ok((tier, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    #[test]
    fn limits_parse_for_every_tier() {
        let limits: TierLimits = "bronze=1000/5000, silver=10000/50000, gold=100000/500000"
            .parse()
            .unwrap();
        assert_eq!(limits.for_tier(Tier::Silver).per_day, amount("50000"));
        assert!(
            "bronze=1000/5000".parse::<TierLimits>().is_err(),
            "all tiers are required"
        );
        assert!(
            "bronze=6000/5000,silver=1/1,gold=1/1"
                .parse::<TierLimits>()
                .is_err()
        );
        assert!("platinum=1/1".parse::<TierLimits>().is_err());
    }

    #[test]
    fn a_transfer_over_either_limit_is_refused() {
        let limit = Limit {
            per_transaction: amount("100"),
            per_day: amount("250"),
        };
        assert!(limit.check(amount("100"), amount("150")).is_ok());
        assert!(limit.check(amount("100.01"), amount("0")).is_err());
        let err = limit.check(amount("100"), amount("150.01")).unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert_eq!(err.details.unwrap()["reason"], "tier_limit");
    }
}
