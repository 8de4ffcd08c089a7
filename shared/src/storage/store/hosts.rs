//! The breakers of destination hosts ([`crate::delivery::host_breaker`]): two kinds of small
//! item in the deliveries table, under keys no venue's history uses (`~…`; venue ids are
//! `[A-Za-z0-9_-]`):
//!
//! - a host's strikes of one window (`~host#{host}`, `strikes#{window}`): the set of
//!   endpoints whose attempts hung there, at most `cap` of them (so a write stays one unit
//!   however many endpoints hang), expiring a day later;
//! - the not-answering list (`~hosts`, `not_answering`): one attribute per host on it
//!   (`h_{host}`: until when it is open, how many times in a row, a probe's lease). Every
//!   deliverer reads it at most once a second (half a read unit); it is written only when a
//!   host trips, is probed, or answers again. A host whose probe was answered, but slowly,
//!   is kept on it as *answering slowly* until then (`s_{host}`): its slow attempts do not
//!   strike it, so a slow receiver that works is not cut off again and again. Each write that
//!   adds to the list also removes entries gone stale (answering slowly no longer; not
//!   answering a day past its cooldown, with no delivery to probe it since), so the item
//!   stays the size of what is current.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use chrono::{DateTime, TimeZone, Utc};

use super::{is_conditional_failure, n, s, written, Store};
use crate::delivery::host_breaker::HostCircuit;
use crate::model::error::{Error, Result};

const LIST: &str = "~hosts";
const LIST_SORT: &str = "not_answering";

fn list_key() -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("history_key".to_owned(), s(LIST)),
        ("delivery_id".to_owned(), s(LIST_SORT)),
    ])
}

fn attr(host: &str) -> String {
    format!("h_{host}")
}

fn ms(at: DateTime<Utc>) -> AttributeValue {
    n(at.timestamp_millis())
}

/// An update of the list: `sets` and `removes` (with their own names), and the `stale`
/// entries of other hosts removed with it (the list prunes itself as it is written).
fn list_update(
    sets: &[&str],
    removes: &[&str],
    stale: &[String],
) -> (String, Vec<(String, String)>) {
    let names: Vec<(String, String)> = stale
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("#x{i}"), a.clone()))
        .collect();
    let removes: Vec<&str> = removes
        .iter()
        .copied()
        .chain(names.iter().map(|(k, _)| k.as_str()))
        .collect();
    let mut expression = String::new();
    if !sets.is_empty() {
        expression = format!("SET {}", sets.join(", "));
    }
    if !removes.is_empty() {
        if !expression.is_empty() {
            expression.push(' ');
        }
        expression.push_str(&format!("REMOVE {}", removes.join(", ")));
    }
    (expression, names)
}

fn circuit_of(value: &AttributeValue) -> Option<HostCircuit> {
    let m = value.as_m().ok()?;
    let at = |k: &str| -> Option<DateTime<Utc>> {
        let ms: i64 = m.get(k)?.as_n().ok()?.parse().ok()?;
        Utc.timestamp_millis_opt(ms).single()
    };
    Some(HostCircuit {
        open_until: at("u")?,
        opens: m.get("o")?.as_n().ok()?.parse().ok()?,
        probe_until: at("p"),
    })
}

fn circuit_value(c: &HostCircuit) -> AttributeValue {
    let mut m = HashMap::from([
        ("u".to_owned(), ms(c.open_until)),
        ("o".to_owned(), n(c.opens)),
    ]);
    if let Some(p) = c.probe_until {
        m.insert("p".to_owned(), ms(p));
    }
    AttributeValue::M(m)
}

/// The not-answering list as read.
#[derive(Clone, Debug, Default)]
pub struct HostList {
    pub not_answering: HashMap<String, HostCircuit>,
    /// Hosts answering slowly, until then.
    pub slow: HashMap<String, DateTime<Utc>>,
}

impl HostList {
    /// The entries of hosts other than `host` that are stale at `now` (their attribute
    /// names): answering slowly no longer, or not answering a day past their cooldown and
    /// not being probed (nothing has gone there since); at most 20.
    pub fn stale(&self, host: &str, now: DateTime<Utc>) -> Vec<String> {
        let day = chrono::TimeDelta::days(1);
        let open = self
            .not_answering
            .iter()
            .filter(|(h, c)| {
                h.as_str() != host
                    && c.open_until + day < now
                    && c.probe_until.is_none_or(|p| p < now)
            })
            .map(|(h, _)| attr(h));
        let slow = self
            .slow
            .iter()
            .filter(|(h, until)| h.as_str() != host && **until < now)
            .map(|(h, _)| format!("s_{h}"));
        let mut stale: Vec<String> = open.chain(slow).collect();
        stale.sort();
        stale.truncate(20);
        stale
    }
}

impl Store {
    /// A write of the not-answering list.
    fn list_write(
        &self,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.ddb
            .update_item()
            .table_name(&self.deliveries)
            .set_key(Some(list_key()))
    }

    /// The not-answering list: each host on it and its circuit, and the hosts answering
    /// slowly (one eventually consistent read of a small item).
    pub async fn hosts_not_answering(&self) -> Result<HostList> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.deliveries)
            .set_key(Some(list_key()))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", e))?;
        let item = out.item.unwrap_or_default();
        Ok(HostList {
            not_answering: item
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("h_")?.to_owned(), circuit_of(v)?)))
                .collect(),
            slow: item
                .iter()
                .filter_map(|(k, v)| {
                    let ms: i64 = v.as_n().ok()?.parse().ok()?;
                    Some((
                        k.strip_prefix("s_")?.to_owned(),
                        Utc.timestamp_millis_opt(ms).single()?,
                    ))
                })
                .collect(),
        })
    }

    /// Keeps `host` as answering slowly until `until` (and removes `stale` entries).
    pub async fn host_answers_slowly(
        &self,
        host: &str,
        until: DateTime<Utc>,
        stale: &[String],
    ) -> Result<()> {
        let (expression, names) = list_update(&["#s = :until"], &[], stale);
        let result = self
            .list_write()
            .update_expression(expression)
            .set_expression_attribute_names(Some(names.into_iter().collect()))
            .expression_attribute_names("#s", format!("s_{host}"))
            .expression_attribute_values(":until", ms(until))
            .send()
            .await;
        written(result).map(|_| ())
    }

    /// A strike at `host` by `endpoint` in window `window`: how many different endpoints
    /// struck in it so far (`cap` when that many had already: the write is refused, and
    /// costs one unit, so the item never grows past `cap` ids).
    pub async fn strike_host(
        &self,
        host: &str,
        endpoint: &str,
        (window, cap): (i64, u32),
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let result = self
            .ddb
            .update_item()
            .table_name(&self.deliveries)
            .key("history_key", s(format!("~host#{host}")))
            .key("delivery_id", s(format!("strikes#{window}")))
            .update_expression("ADD endpoints :e SET expires_at = :exp")
            .condition_expression("attribute_not_exists(endpoints) OR size(endpoints) < :cap OR contains(endpoints, :one)")
            .expression_attribute_values(":e", AttributeValue::Ss(vec![endpoint.to_owned()]))
            .expression_attribute_values(":one", s(endpoint))
            .expression_attribute_values(":cap", n(cap.max(1)))
            .expression_attribute_values(":exp", n((now + chrono::Duration::days(1)).timestamp()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match result {
            Ok(out) => Ok(out
                .attributes
                .as_ref()
                .and_then(|a| a.get("endpoints"))
                .and_then(|v| v.as_ss().ok())
                .map_or(1, Vec::len)),
            Err(e) if is_conditional_failure(&e) => Ok(cap as usize),
            Err(e) => Err(Error::aws("dynamodb", e)),
        }
    }

    /// Puts `host` on the list as `circuit`, unless it is on it already: `true` if this
    /// write did (and removed `stale` entries).
    pub async fn open_host(
        &self,
        host: &str,
        circuit: &HostCircuit,
        stale: &[String],
    ) -> Result<bool> {
        let (expression, names) = list_update(&["#h = :c"], &[], stale);
        let result = self
            .list_write()
            .update_expression(expression)
            .set_expression_attribute_names(Some(names.into_iter().collect()))
            .condition_expression("attribute_not_exists(#h)")
            .expression_attribute_names("#h", attr(host))
            .expression_attribute_values(":c", circuit_value(circuit))
            .send()
            .await;
        written(result)
    }

    /// Takes the probe of a host whose cooldown is over, until `lease`: `true` if this
    /// delivery is the probe.
    pub async fn take_host_probe(
        &self,
        host: &str,
        now: DateTime<Utc>,
        lease: DateTime<Utc>,
    ) -> Result<bool> {
        let result = self
            .list_write()
            .update_expression("SET #h.p = :lease")
            .condition_expression(
                "attribute_exists(#h) AND #h.u <= :now AND (attribute_not_exists(#h.p) OR #h.p < :now)",
            )
            .expression_attribute_names("#h", attr(host))
            .expression_attribute_values(":now", ms(now))
            .expression_attribute_values(":lease", ms(lease))
            .send()
            .await;
        written(result)
    }

    /// After a host's probe: `Ok(slow_until)`, it answered (off the list; answering slowly
    /// until then, if it was slow); `Err`, it did not (open again so).
    pub async fn after_host_probe(
        &self,
        host: &str,
        outcome: std::result::Result<Option<DateTime<Utc>>, &HostCircuit>,
        stale: &[String],
    ) -> Result<()> {
        let (sets, removes): (&[&str], &[&str]) = match outcome {
            Ok(None) => (&[], &["#h"]),
            Ok(Some(_)) => (&["#s = :until"], &["#h"]),
            Err(_) => (&["#h = :c"], &[]),
        };
        let (expression, names) = list_update(sets, removes, stale);
        let update = self
            .list_write()
            .update_expression(expression)
            .condition_expression("attribute_exists(#h)")
            .set_expression_attribute_names(Some(names.into_iter().collect()))
            .expression_attribute_names("#h", attr(host));
        let update = match outcome {
            Ok(None) => update,
            Ok(Some(until)) => update
                .expression_attribute_names("#s", format!("s_{host}"))
                .expression_attribute_values(":until", ms(until)),
            Err(c) => update.expression_attribute_values(":c", circuit_value(c)),
        };
        written(update.send().await).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_write_of_the_list_removes_what_went_stale() {
        let circuit = |open_until, probe_until| HostCircuit {
            open_until,
            opens: 1,
            probe_until,
        };
        let day = 86_400;
        let list = HostList {
            not_answering: HashMap::from([
                ("down:443".to_owned(), circuit(at(-60), None)),
                ("forgotten:443".to_owned(), circuit(at(-day - 1), None)),
                ("probed:443".to_owned(), circuit(at(-day - 1), Some(at(5)))),
                ("this:443".to_owned(), circuit(at(-day - 1), None)),
            ]),
            slow: HashMap::from([
                ("slow:443".to_owned(), at(60)),
                ("was-slow:443".to_owned(), at(-1)),
                ("this:443".to_owned(), at(-1)),
            ]),
        };
        assert_eq!(
            list.stale("this:443", at(0)),
            vec!["h_forgotten:443".to_owned(), "s_was-slow:443".to_owned()]
        );
        let (expression, names) =
            list_update(&["#h = :c"], &["#r"], &list.stale("this:443", at(0)));
        assert_eq!(expression, "SET #h = :c REMOVE #r, #x0, #x1");
        assert_eq!(
            names,
            vec![
                ("#x0".to_owned(), "h_forgotten:443".to_owned()),
                ("#x1".to_owned(), "s_was-slow:443".to_owned())
            ]
        );
        assert_eq!(list_update(&[], &["#h"], &[]).0, "REMOVE #h");
    }
}
