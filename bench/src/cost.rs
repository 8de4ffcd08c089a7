//! The cost model: dollars per million deliveries from counted requests, measured item sizes
//! and measured function durations, at AWS list prices.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

/// List prices, us-east-1. AWS changes them; the date says when these were taken.
#[derive(Clone, Debug)]
pub struct Prices {
    pub date: &'static str,
    /// Lambda on arm64, per GB-second.
    pub lambda_gb_second: f64,
    pub lambda_request: f64,
    /// SQS standard queue, per request (per 64 KiB chunk).
    pub sqs_request: f64,
    /// DynamoDB on-demand, per write / read request unit.
    pub ddb_write_unit: f64,
    pub ddb_read_unit: f64,
    /// DynamoDB provisioned, per capacity unit-hour.
    pub ddb_wcu_hour: f64,
    pub ddb_rcu_hour: f64,
    /// DynamoDB Standard table class storage, per GB-month.
    pub ddb_storage_gb_month: f64,
    pub kms_request: f64,
    /// CloudWatch Logs (Standard class), per GB ingested.
    pub logs_ingested_gb: f64,
}

/// AWS's published us-east-1 list prices (DynamoDB on-demand after its November 2024
/// reduction), as known to this repository on 2026-11-27. Free tiers are left out.
pub const PRICES: Prices = Prices {
    date: "2026-11-27 (us-east-1 list prices; DynamoDB on-demand as reduced 2024-11)",
    lambda_gb_second: 0.000_013_333_4,
    lambda_request: 0.20 / 1e6,
    sqs_request: 0.40 / 1e6,
    ddb_write_unit: 0.625 / 1e6,
    ddb_read_unit: 0.125 / 1e6,
    ddb_wcu_hour: 0.000_65,
    ddb_rcu_hour: 0.000_13,
    ddb_storage_gb_month: 0.25,
    kms_request: 0.03 / 10_000.0,
    logs_ingested_gb: 0.50,
};

/// What one delivery costs in AWS units, averaged over a workload (measured).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UnitsPerDelivery {
    pub lambda_requests: f64,
    pub lambda_gb_seconds: f64,
    pub sqs_requests: f64,
    pub ddb_write_units: f64,
    pub ddb_read_units: f64,
    /// Bytes held in DynamoDB for the retention period.
    pub stored_bytes: f64,
    pub kms_requests: f64,
    /// Bytes of log lines (metric lines included) CloudWatch Logs ingests, its metadata
    /// counted ([`crate::logs`]).
    pub log_bytes: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Capacity {
    OnDemand,
    /// Provisioned capacity used at this fraction on average.
    Provisioned {
        utilisation: f64,
    },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Breakdown {
    pub lambda: f64,
    pub sqs: f64,
    pub ddb_writes: f64,
    pub ddb_reads: f64,
    pub ddb_storage: f64,
    pub kms: f64,
    pub logs: f64,
}

impl Breakdown {
    pub fn total(&self) -> f64 {
        self.lambda
            + self.sqs
            + self.ddb_writes
            + self.ddb_reads
            + self.ddb_storage
            + self.kms
            + self.logs
    }
}

/// Dollars per million deliveries. Storage: each delivery's bytes are held for
/// `retention_days` (30: one month of history per month of deliveries).
pub fn per_million(
    prices: &Prices,
    units: &UnitsPerDelivery,
    capacity: Capacity,
    retention_days: f64,
) -> Breakdown {
    let m = 1e6;
    let (write_unit, read_unit) = match capacity {
        Capacity::OnDemand => (prices.ddb_write_unit, prices.ddb_read_unit),
        Capacity::Provisioned { utilisation } => (
            prices.ddb_wcu_hour / (3600.0 * utilisation),
            prices.ddb_rcu_hour / (3600.0 * utilisation),
        ),
    };
    Breakdown {
        lambda: m
            * (units.lambda_requests * prices.lambda_request
                + units.lambda_gb_seconds * prices.lambda_gb_second),
        sqs: m * units.sqs_requests * prices.sqs_request,
        ddb_writes: m * units.ddb_write_units * write_unit,
        ddb_reads: m * units.ddb_read_units * read_unit,
        ddb_storage: m * units.stored_bytes / 1e9
            * prices.ddb_storage_gb_month
            * (retention_days / 30.0),
        kms: m * units.kms_requests * prices.kms_request,
        logs: m * units.log_bytes / 1e9 * prices.logs_ingested_gb,
    }
}

/// DynamoDB's size of an item: attribute names plus values, as it bills them.
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => {
            let digits = n.trim_start_matches('-').replace('.', "").len();
            digits.div_ceil(2) + 1
        }
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(items) => 3 + items.iter().map(|i| 1 + value_size(i)).sum::<usize>(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| 1 + k.len() + value_size(v))
                .sum::<usize>()
        }
        AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
        AttributeValue::Ns(set) => set.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
        _ => 0,
    }
}

/// Write units of writing an item of this size (1 KB each, rounded up).
pub fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units() -> UnitsPerDelivery {
        UnitsPerDelivery {
            lambda_requests: 0.1,
            lambda_gb_seconds: 0.001,
            sqs_requests: 0.3,
            ddb_write_units: 1.5,
            ddb_read_units: 0.5,
            stored_bytes: 1000.0,
            kms_requests: 0.0,
            log_bytes: 400.0,
        }
    }

    #[test]
    fn on_demand_per_million_is_units_times_prices() {
        let b = per_million(&PRICES, &units(), Capacity::OnDemand, 30.0);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(
            close(b.lambda, 0.1 * 0.20 + 1000.0 * 0.000_013_333_4),
            "{b:?}"
        );
        assert!(close(b.sqs, 0.3 * 0.40));
        assert!(close(b.ddb_writes, 1.5 * 0.625));
        assert!(close(b.ddb_reads, 0.5 * 0.125));
        assert!(close(b.ddb_storage, 1.0 * 0.25));
        // 400 B a delivery: 0.4 GB per million, at $0.50 a GB.
        assert!(close(b.logs, 0.4 * 0.50));
        assert!(close(
            b.total(),
            b.lambda + b.sqs + b.ddb_writes + b.ddb_reads + b.ddb_storage + b.logs
        ));
    }

    #[test]
    fn provisioned_at_half_use_costs_what_the_hours_cost() {
        let b = per_million(
            &PRICES,
            &units(),
            Capacity::Provisioned { utilisation: 0.5 },
            30.0,
        );
        // 1.5 M write units at 1,800 units per WCU-hour (half of 3,600).
        assert!((b.ddb_writes - 1.5e6 / 1800.0 * 0.000_65).abs() < 1e-9);
        assert!(b.ddb_writes < per_million(&PRICES, &units(), Capacity::OnDemand, 30.0).ddb_writes);
    }

    #[test]
    fn item_sizes_follow_dynamodb_rules() {
        let item = HashMap::from([
            ("pk".to_owned(), AttributeValue::S("abc".into())), // 2 + 3
            ("n".to_owned(), AttributeValue::N("12345".into())), // 1 + 3 + 1
            ("ok".to_owned(), AttributeValue::Bool(true)),      // 2 + 1
        ]);
        assert_eq!(item_size(&item), 5 + 5 + 3);
        assert_eq!(write_units(1), 1.0);
        assert_eq!(write_units(1024), 1.0);
        assert_eq!(write_units(1025), 2.0);
    }
}
