//! The billing rules of the capacity meter ([`super`]): what each DynamoDB request costs,
//! under which partition key, and whether that key (or its table) may spend it now.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde_json::{json, Map, Value};

/// Units a second per partition key and per table (or index).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budgets {
    pub key_read: f64,
    pub key_write: f64,
    pub table_read: f64,
    pub table_write: f64,
}

impl Budgets {
    /// AWS's figures: 3,000 read and 1,000 write units a second per partition; a new
    /// on-demand table 12,000 and 4,000.
    pub const AWS: Budgets = Budgets {
        key_read: 3000.0,
        key_write: 1000.0,
        table_read: 12000.0,
        table_write: 4000.0,
    };

    /// AWS's figures times `factor` (tests reach a hot key at a rate this machine makes).
    pub fn scaled(factor: f64) -> Self {
        let f = factor.max(1e-6);
        Self {
            key_read: Self::AWS.key_read * f,
            key_write: Self::AWS.key_write * f,
            table_read: Self::AWS.table_read * f,
            table_write: Self::AWS.table_write * f,
        }
    }
}

/// What the index holds of an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Projected {
    All,
    KeysOnly,
    Include(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct IndexKeys {
    pub name: String,
    pub hash: String,
    pub range: Option<String>,
    pub projection: Projected,
}

/// A table's keys and indexes, as the template declares them.
#[derive(Clone, Debug)]
pub struct TableKeys {
    /// The template's logical id (`DeliveriesTable`): how the meter names it.
    pub logical: String,
    pub name: String,
    pub arn: String,
    pub hash: String,
    pub range: Option<String>,
    pub indexes: Vec<IndexKeys>,
}

/// What one partition key of a table or index spent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyUsage {
    /// `DeliveriesTable` or `DeliveriesTable/by_status`.
    pub resource: String,
    /// The partition key's value.
    pub key: String,
    pub read_units: f64,
    pub write_units: f64,
    /// The most spent in any one second.
    pub peak_read: f64,
    pub peak_write: f64,
    /// Requests (or batch entries) refused for this key.
    pub throttled: u64,
}

impl KeyUsage {
    /// How full its busiest second was, as a share of `budgets` (1.0: at the limit).
    pub fn peak_share(&self, budgets: &Budgets) -> f64 {
        (self.peak_read / budgets.key_read).max(self.peak_write / budgets.key_write)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Read,
    Write,
}

/// A token bucket: `rate` units a second, at most one second's worth saved.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = now;
    }
}

#[derive(Debug, Default)]
struct Window {
    second: u64,
    read: f64,
    write: f64,
}

/// One item's shadow: its size, and what each index of its table holds of it.
#[derive(Clone, Debug, Default)]
struct Shadow {
    size: usize,
    index: Vec<Option<IndexEntry>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct IndexEntry {
    hash: String,
    projected: String,
    size: usize,
}

/// A partition a request touches: (resource, key value).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Partition {
    resource: String,
    key: String,
}

/// Where the meter's units go and what it has seen.
pub struct Ledger {
    budgets: Budgets,
    tables: HashMap<String, TableKeys>,
    shadow: HashMap<(String, String), Shadow>,
    key_buckets: HashMap<(Partition, Kind), Bucket>,
    table_buckets: HashMap<(String, Kind), Bucket>,
    usage: BTreeMap<Partition, (KeyUsage, Window)>,
    /// Units taken from a key's bucket when a batch entry was admitted (its estimate), not
    /// taken again when the entry is charged.
    prepaid: HashMap<(Partition, Kind), f64>,
    started: Instant,
}

/// Why a request (or an entry of a batch) was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttle {
    pub reason: String,
    pub resource_arn: String,
}

impl Ledger {
    pub fn new(budgets: Budgets, tables: impl IntoIterator<Item = TableKeys>) -> Self {
        Self {
            budgets,
            tables: tables.into_iter().map(|t| (t.name.clone(), t)).collect(),
            shadow: HashMap::new(),
            key_buckets: HashMap::new(),
            table_buckets: HashMap::new(),
            usage: BTreeMap::new(),
            prepaid: HashMap::new(),
            started: Instant::now(),
        }
    }

    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// Every partition key that spent anything, the busiest (by its peak share) first.
    pub fn usage(&self) -> Vec<KeyUsage> {
        let mut all: Vec<KeyUsage> = self.usage.values().map(|(u, _)| u.clone()).collect();
        let b = self.budgets;
        all.sort_by(|x, y| {
            y.peak_share(&b)
                .total_cmp(&x.peak_share(&b))
                .then_with(|| x.resource.cmp(&y.resource))
                .then_with(|| x.key.cmp(&y.key))
        });
        all
    }

    /// Forgets what was spent (not the shadow of the items).
    pub fn reset_usage(&mut self) {
        self.usage.clear();
    }

    fn partition(table: &TableKeys, index: Option<&IndexKeys>, key: String) -> Partition {
        Partition {
            resource: match index {
                Some(i) => format!("{}/{}", table.logical, i.name),
                None => table.logical.clone(),
            },
            key,
        }
    }

    /// Whether `partition` (and its table) may spend `kind` now.
    fn admit(
        &mut self,
        partition: &Partition,
        kind: Kind,
        arn: &str,
        now: Instant,
    ) -> Option<Throttle> {
        let b = self.budgets;
        let (key_rate, table_rate) = match kind {
            Kind::Read => (b.key_read, b.table_read),
            Kind::Write => (b.key_write, b.table_write),
        };
        let what = match kind {
            Kind::Read => "Read",
            Kind::Write => "Write",
        };
        let level = if partition.resource.contains('/') {
            "Index"
        } else {
            "Table"
        };
        let key_bucket = self
            .key_buckets
            .entry((partition.clone(), kind))
            .or_insert(Bucket {
                tokens: key_rate,
                at: now,
            });
        key_bucket.refill(key_rate, now);
        let key_spent = key_bucket.tokens <= 0.0;
        let table_bucket = self
            .table_buckets
            .entry((partition.resource.clone(), kind))
            .or_insert(Bucket {
                tokens: table_rate,
                at: now,
            });
        table_bucket.refill(table_rate, now);
        let table_spent = table_bucket.tokens <= 0.0;
        let reason = if key_spent {
            format!("{level}{what}KeyRangeThroughputExceeded")
        } else if table_spent {
            format!("{level}{what}MaxOnDemandThroughputExceeded")
        } else {
            return None;
        };
        let entry = self.usage.entry(partition.clone()).or_insert_with(|| {
            (
                KeyUsage {
                    resource: partition.resource.clone(),
                    key: partition.key.clone(),
                    ..KeyUsage::default()
                },
                Window::default(),
            )
        });
        entry.0.throttled += 1;
        Some(Throttle {
            reason,
            resource_arn: match partition.resource.split_once('/') {
                Some((_, index)) => format!("{arn}/index/{index}"),
                None => arn.to_owned(),
            },
        })
    }

    fn charge(&mut self, partition: &Partition, kind: Kind, units: f64, now: Instant) {
        if units <= 0.0 {
            return;
        }
        let b = self.budgets;
        let (key_rate, table_rate) = match kind {
            Kind::Read => (b.key_read, b.table_read),
            Kind::Write => (b.key_write, b.table_write),
        };
        let bucket = self
            .key_buckets
            .entry((partition.clone(), kind))
            .or_insert(Bucket {
                tokens: key_rate,
                at: now,
            });
        bucket.refill(key_rate, now);
        bucket.tokens -= units;
        let bucket = self
            .table_buckets
            .entry((partition.resource.clone(), kind))
            .or_insert(Bucket {
                tokens: table_rate,
                at: now,
            });
        bucket.refill(table_rate, now);
        bucket.tokens -= units;
        let second = now.saturating_duration_since(self.started).as_secs();
        let (usage, window) = self.usage.entry(partition.clone()).or_insert_with(|| {
            (
                KeyUsage {
                    resource: partition.resource.clone(),
                    key: partition.key.clone(),
                    ..KeyUsage::default()
                },
                Window::default(),
            )
        });
        if window.second != second {
            *window = Window {
                second,
                ..Window::default()
            };
        }
        match kind {
            Kind::Read => {
                usage.read_units += units;
                window.read += units;
                usage.peak_read = usage.peak_read.max(window.read);
            }
            Kind::Write => {
                usage.write_units += units;
                window.write += units;
                usage.peak_write = usage.peak_write.max(window.write);
            }
        }
    }

    /// Takes a batch entry's estimate from its key's bucket as it is admitted, so that the
    /// next entries of the batch see it spent.
    fn prepay(&mut self, partition: &Partition, kind: Kind, units: f64) {
        for bucket in [
            self.key_buckets.get_mut(&(partition.clone(), kind)),
            self.table_buckets
                .get_mut(&(partition.resource.clone(), kind)),
        ]
        .into_iter()
        .flatten()
        {
            bucket.tokens -= units;
        }
        *self.prepaid.entry((partition.clone(), kind)).or_default() += units;
    }

    /// The shadow of an item written whole.
    fn shadow_of(table: &TableKeys, item: &Map<String, Value>) -> Shadow {
        Shadow {
            size: item_size(item),
            index: table
                .indexes
                .iter()
                .map(|i| index_entry(table, i, item))
                .collect(),
        }
    }

    fn item_key(table: &TableKeys, key: &Map<String, Value>) -> Option<(String, String)> {
        let hash = key_text(key.get(&table.hash)?);
        let range = table
            .range
            .as_ref()
            .and_then(|r| key.get(r))
            .map(key_text)
            .unwrap_or_default();
        Some((table.name.clone(), format!("{hash}\u{1}{range}")))
    }

    /// The partitions a write of an item touches before it is made: the table's, and those of
    /// the index entries it has (shadow) or will have (`after`, when the request tells).
    fn write_partitions(
        &self,
        table: &TableKeys,
        key: &Map<String, Value>,
        after: &[Option<String>],
    ) -> Vec<Partition> {
        let mut out = Vec::new();
        let Some(hash) = key.get(&table.hash).map(key_text) else {
            return out;
        };
        out.push(Self::partition(table, None, hash));
        let before = Self::item_key(table, key).and_then(|k| self.shadow.get(&k));
        for (i, index) in table.indexes.iter().enumerate() {
            let old = before
                .and_then(|s| s.index.get(i).cloned().flatten())
                .map(|e| e.hash);
            let new = after.get(i).cloned().flatten();
            for hash in [old, new].into_iter().flatten() {
                let p = Self::partition(table, Some(index), hash);
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// The table and index writes of replacing `before` by `after` (None: no item), charged.
    fn charge_write(
        &mut self,
        table: &TableKeys,
        key: (String, String),
        after: Option<Shadow>,
        now: Instant,
    ) {
        let before = self.shadow.get(&key).cloned();
        let size = before
            .as_ref()
            .map_or(0, |s| s.size)
            .max(after.as_ref().map_or(0, |s| s.size));
        let hash = key.1.split('\u{1}').next().unwrap_or_default().to_owned();
        self.charge(
            &Self::partition(table, None, hash),
            Kind::Write,
            write_units(size),
            now,
        );
        for (i, index) in table.indexes.iter().enumerate() {
            let old = before
                .as_ref()
                .and_then(|s| s.index.get(i).cloned().flatten());
            let new = after
                .as_ref()
                .and_then(|s| s.index.get(i).cloned().flatten());
            match (old, new) {
                (None, None) => {}
                (Some(o), Some(n)) if o == n => {}
                (Some(o), Some(n)) if o.hash == n.hash => {
                    let p = Self::partition(table, Some(index), n.hash);
                    self.charge(&p, Kind::Write, write_units(o.size.max(n.size)), now);
                }
                (o, n) => {
                    for entry in [o, n].into_iter().flatten() {
                        let p = Self::partition(table, Some(index), entry.hash);
                        self.charge(&p, Kind::Write, write_units(entry.size), now);
                    }
                }
            }
        }
        match after {
            Some(shadow) => {
                self.shadow.insert(key, shadow);
            }
            None => {
                self.shadow.remove(&key);
            }
        }
    }

    /// A failed condition: the item's size is spent, nothing changes.
    fn charge_condition_failed(
        &mut self,
        table: &TableKeys,
        key: &Map<String, Value>,
        now: Instant,
    ) {
        let size = Self::item_key(table, key)
            .and_then(|k| self.shadow.get(&k))
            .map_or(0, |s| s.size);
        if let Some(hash) = key.get(&table.hash).map(key_text) {
            self.charge(
                &Self::partition(table, None, hash),
                Kind::Write,
                write_units(size),
                now,
            );
        }
    }

    fn known_size(&self, table: &TableKeys, item: &Map<String, Value>) -> usize {
        let seen = item_size(item);
        Self::item_key(table, item)
            .and_then(|k| self.shadow.get(&k))
            .map_or(seen, |s| s.size.max(seen))
    }
}

/// What the meter decided about a request before it is forwarded.
pub(super) enum Plan {
    /// Forward as it is.
    Forward,
    /// Refuse it whole.
    Refuse(Throttle),
    /// A batch with some entries refused: forward `body`, add `unprocessed` to the answer.
    Partial { body: Value, unprocessed: Value },
}

impl Ledger {
    fn table(&self, body: &Value) -> Option<TableKeys> {
        self.tables.get(body["TableName"].as_str()?).cloned()
    }

    pub(super) fn plan(&mut self, op: &str, body: &Value, now: Instant) -> Plan {
        let Some(table) = self.table(body) else {
            return match op {
                "BatchGetItem" | "BatchWriteItem" => self.plan_batch(op, body, now),
                _ => Plan::Forward,
            };
        };
        let throttle = match op {
            "GetItem" => body["Key"].as_object().and_then(|key| {
                self.admit_read(&table, None, key, body["ConsistentRead"] == true, now)
            }),
            "Query" => {
                let index = body["IndexName"]
                    .as_str()
                    .and_then(|n| table.indexes.iter().find(|i| i.name == n))
                    .cloned();
                let attr = index.as_ref().map_or(&table.hash, |i| &i.hash).clone();
                query_hash(body, &attr).and_then(|hash| {
                    let key = Map::from_iter([(attr, json!({ "S": hash }))]);
                    let consistent = index.is_none() && body["ConsistentRead"] == true;
                    self.admit_read(&table, index.as_ref(), &key, consistent, now)
                })
            }
            "PutItem" => body["Item"]
                .as_object()
                .and_then(|item| self.admit_write(&table, item, Some(item), &[], now)),
            "UpdateItem" | "DeleteItem" => body["Key"].as_object().and_then(|key| {
                let after = predicted_index_hashes(&table, op, body);
                self.admit_write(&table, key, None, &after, now)
            }),
            _ => None,
        };
        match throttle {
            Some(t) => Plan::Refuse(t),
            None => Plan::Forward,
        }
    }

    /// Admits a read of `key`'s partition (of the table, or of `index`), its least cost taken
    /// at once so that reads arriving together see it spent.
    fn admit_read(
        &mut self,
        table: &TableKeys,
        index: Option<&IndexKeys>,
        key: &Map<String, Value>,
        consistent: bool,
        now: Instant,
    ) -> Option<Throttle> {
        let attr = index.map_or(&table.hash, |i| &i.hash);
        let p = Self::partition(table, index, key.get(attr).map(key_text)?);
        let throttle = self.admit(&p, Kind::Read, &table.arn, now);
        if throttle.is_none() {
            self.prepay(&p, Kind::Read, read_units(0, consistent));
        }
        throttle
    }

    /// Admits a write of the item of `key` (`item`: written whole), its estimated cost taken
    /// at once from the table's key.
    fn admit_write(
        &mut self,
        table: &TableKeys,
        key: &Map<String, Value>,
        item: Option<&Map<String, Value>>,
        after: &[Option<String>],
        now: Instant,
    ) -> Option<Throttle> {
        let after: Vec<Option<String>> = match item {
            Some(item) => Self::shadow_of(table, item)
                .index
                .into_iter()
                .map(|e| e.map(|e| e.hash))
                .collect(),
            None => after.to_vec(),
        };
        let partitions = self.write_partitions(table, key, &after);
        let throttle = partitions
            .iter()
            .find_map(|p| self.admit(p, Kind::Write, &table.arn, now));
        if throttle.is_none() {
            let before = Self::item_key(table, key)
                .and_then(|k| self.shadow.get(&k))
                .map_or(0, |s| s.size);
            let size = item.map_or(0, item_size).max(before);
            if let Some(p) = partitions.first() {
                self.prepay(p, Kind::Write, write_units(size));
            }
        }
        throttle
    }

    fn plan_batch(&mut self, op: &str, body: &Value, now: Instant) -> Plan {
        let Some(requests) = body["RequestItems"].as_object() else {
            return Plan::Forward;
        };
        let mut kept = Map::new();
        let mut refused = Map::new();
        let mut first_throttle = None;
        for (name, request) in requests {
            let Some(table) = self.tables.get(name).cloned() else {
                kept.insert(name.clone(), request.clone());
                continue;
            };
            let entries = if op == "BatchGetItem" {
                request["Keys"].as_array().cloned().unwrap_or_default()
            } else {
                request.as_array().cloned().unwrap_or_default()
            };
            let (mut ok, mut no) = (Vec::new(), Vec::new());
            for entry in entries {
                let throttle = if op == "BatchGetItem" {
                    let consistent = request["ConsistentRead"] == true;
                    entry
                        .as_object()
                        .and_then(|key| self.admit_read(&table, None, key, consistent, now))
                } else if let Some(item) = entry["PutRequest"]["Item"].as_object() {
                    self.admit_write(&table, item, Some(item), &[], now)
                } else {
                    entry["DeleteRequest"]["Key"]
                        .as_object()
                        .and_then(|key| self.admit_write(&table, key, None, &[], now))
                };
                match throttle {
                    Some(t) => {
                        first_throttle.get_or_insert(t);
                        no.push(entry);
                    }
                    None => ok.push(entry),
                }
            }
            let rebuild = |entries: Vec<Value>| {
                if op == "BatchGetItem" {
                    let mut r = request.clone();
                    r["Keys"] = Value::Array(entries);
                    r
                } else {
                    Value::Array(entries)
                }
            };
            if !ok.is_empty() {
                kept.insert(name.clone(), rebuild(ok));
            }
            if !no.is_empty() {
                refused.insert(name.clone(), rebuild(no));
            }
        }
        match first_throttle {
            None => Plan::Forward,
            Some(t) if kept.is_empty() => Plan::Refuse(t),
            Some(_) => {
                let mut body = body.clone();
                body["RequestItems"] = Value::Object(kept);
                Plan::Partial {
                    body,
                    unprocessed: Value::Object(refused),
                }
            }
        }
    }

    /// Charges what a forwarded request spent, from its answer (and, for an UpdateItem, the
    /// item as it is now: `after`).
    pub(super) fn settle(
        &mut self,
        op: &str,
        body: &Value,
        status: u16,
        answer: &Value,
        after: Option<&Map<String, Value>>,
        now: Instant,
    ) {
        let condition_failed = status == 400
            && answer["__type"]
                .as_str()
                .is_some_and(|t| t.ends_with("ConditionalCheckFailedException"));
        if status != 200 && !condition_failed {
            return;
        }
        match op {
            "GetItem" => {
                let Some(table) = self.table(body) else {
                    return;
                };
                let Some(hash) = body["Key"].get(&table.hash).map(key_text) else {
                    return;
                };
                let size = answer["Item"]
                    .as_object()
                    .map_or(0, |item| self.known_size(&table, item));
                if let (Some(item), true) = (
                    answer["Item"].as_object(),
                    body.get("ProjectionExpression").is_none(),
                ) {
                    if let Some(key) = Self::item_key(&table, item) {
                        self.shadow
                            .entry(key)
                            .or_insert_with(|| Self::shadow_of(&table, item));
                    }
                }
                let units = read_units(size, body["ConsistentRead"] == true);
                self.charge(&Self::partition(&table, None, hash), Kind::Read, units, now);
            }
            "Query" => {
                let Some(table) = self.table(body) else {
                    return;
                };
                let index = body["IndexName"]
                    .as_str()
                    .and_then(|n| table.indexes.iter().find(|i| i.name == n))
                    .cloned();
                let attr = index.as_ref().map_or(&table.hash, |i| &i.hash);
                let Some(hash) = query_hash(body, attr) else {
                    return;
                };
                let items = answer["Items"].as_array().cloned().unwrap_or_default();
                let sizes: Vec<usize> = items
                    .iter()
                    .filter_map(Value::as_object)
                    .map(|item| match &index {
                        Some(_) => item_size(item),
                        None => self.known_size(&table, item),
                    })
                    .collect();
                let returned: usize = sizes.iter().sum();
                let scanned = answer["ScannedCount"]
                    .as_u64()
                    .unwrap_or(items.len() as u64) as usize;
                let average = if sizes.is_empty() {
                    1024
                } else {
                    returned / sizes.len()
                };
                let read = returned + scanned.saturating_sub(sizes.len()) * average;
                let consistent = index.is_none() && body["ConsistentRead"] == true;
                let p = Self::partition(&table, index.as_ref(), hash);
                self.charge(&p, Kind::Read, read_units(read, consistent), now);
            }
            "PutItem" => {
                let Some(table) = self.table(body) else {
                    return;
                };
                let Some(item) = body["Item"].as_object() else {
                    return;
                };
                if condition_failed {
                    self.charge_condition_failed(&table, item, now);
                    return;
                }
                if let Some(key) = Self::item_key(&table, item) {
                    self.charge_write(&table, key, Some(Self::shadow_of(&table, item)), now);
                }
            }
            "UpdateItem" | "DeleteItem" => {
                let Some(table) = self.table(body) else {
                    return;
                };
                let Some(key) = body["Key"].as_object() else {
                    return;
                };
                if condition_failed {
                    self.charge_condition_failed(&table, key, now);
                    return;
                }
                let Some(item_key) = Self::item_key(&table, key) else {
                    return;
                };
                let after = if op == "DeleteItem" {
                    None
                } else {
                    match after {
                        Some(item) => Some(Self::shadow_of(&table, item)),
                        // Not read back: taken as it was.
                        None => Some(self.shadow.get(&item_key).cloned().unwrap_or_default()),
                    }
                };
                self.charge_write(&table, item_key, after, now);
            }
            "BatchGetItem" => {
                let Some(requests) = body["RequestItems"].as_object() else {
                    return;
                };
                for (name, request) in requests {
                    let Some(table) = self.tables.get(name).cloned() else {
                        continue;
                    };
                    let consistent = request["ConsistentRead"] == true;
                    let found: Vec<Map<String, Value>> = answer["Responses"][name]
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .filter_map(|i| i.as_object().cloned())
                                .collect()
                        })
                        .unwrap_or_default();
                    let unprocessed = answer["UnprocessedKeys"][name]["Keys"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    for key in request["Keys"].as_array().into_iter().flatten() {
                        if unprocessed.contains(key) {
                            continue;
                        }
                        let Some(key) = key.as_object() else { continue };
                        let Some(hash) = key.get(&table.hash).map(key_text) else {
                            continue;
                        };
                        let wanted = Self::item_key(&table, key);
                        let size = found
                            .iter()
                            .find(|i| Self::item_key(&table, i) == wanted)
                            .map_or(0, |i| self.known_size(&table, i));
                        let p = Self::partition(&table, None, hash);
                        self.charge(&p, Kind::Read, read_units(size, consistent), now);
                    }
                }
            }
            "BatchWriteItem" => {
                let Some(requests) = body["RequestItems"].as_object() else {
                    return;
                };
                for (name, entries) in requests {
                    let Some(table) = self.tables.get(name).cloned() else {
                        continue;
                    };
                    let unprocessed = answer["UnprocessedItems"][name]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    for entry in entries.as_array().into_iter().flatten() {
                        if unprocessed.contains(entry) {
                            continue;
                        }
                        if let Some(item) = entry["PutRequest"]["Item"].as_object() {
                            if let Some(key) = Self::item_key(&table, item) {
                                let shadow = Self::shadow_of(&table, item);
                                self.charge_write(&table, key, Some(shadow), now);
                            }
                        } else if let Some(key) = entry["DeleteRequest"]["Key"].as_object() {
                            if let Some(key) = Self::item_key(&table, key) {
                                self.charge_write(&table, key, None, now);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Write units of an item of `size` bytes: one per KB, at least one.
fn write_units(size: usize) -> f64 {
    size.div_ceil(1024).max(1) as f64
}

/// Read units of `size` bytes read: one per 4 KB, at least one; half if eventually consistent.
fn read_units(size: usize, consistent: bool) -> f64 {
    let units = size.div_ceil(4096).max(1) as f64;
    if consistent {
        units
    } else {
        units / 2.0
    }
}

/// A key attribute's value as text (`{"S":"v"}` → `v`).
fn key_text(value: &Value) -> String {
    value
        .as_object()
        .and_then(|m| m.values().next())
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

/// The partition key value of a Query: `attr = :v` (or `#n = :v`) in its key condition.
fn query_hash(body: &Value, attr: &str) -> Option<String> {
    let expr = body["KeyConditionExpression"].as_str()?;
    assigned(expr, &body["ExpressionAttributeNames"], attr)
        .and_then(|placeholder| body["ExpressionAttributeValues"].get(placeholder))
        .map(key_text)
}

/// The placeholder assigned to `attr` in an expression (`attr = :v`, `#a = :v`), if any.
fn assigned<'a>(expr: &'a str, names: &Value, attr: &str) -> Option<&'a str> {
    let bytes = expr.as_bytes();
    for (i, c) in expr.char_indices() {
        if c != '=' || (i > 0 && matches!(bytes[i - 1], b'<' | b'>' | b'!')) {
            continue;
        }
        let left = expr[..i]
            .trim_end()
            .rsplit(|c: char| c.is_whitespace() || c == '(' || c == ',')
            .next()
            .unwrap_or_default();
        let left = names[left].as_str().unwrap_or(left);
        if left != attr {
            continue;
        }
        let right = expr[i + 1..].trim_start();
        if !right.starts_with(':') {
            continue;
        }
        let end = right
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(right.len());
        return Some(&right[..end]);
    }
    None
}

/// The index partition keys a write will put its item under, as far as the request says:
/// a PutItem's item, an UpdateItem's `SET key = :v`.
fn predicted_index_hashes(table: &TableKeys, op: &str, body: &Value) -> Vec<Option<String>> {
    table
        .indexes
        .iter()
        .map(|index| match op {
            "PutItem" => body["Item"].get(&index.hash).map(key_text),
            "UpdateItem" => body["UpdateExpression"]
                .as_str()
                .and_then(|e| assigned(e, &body["ExpressionAttributeNames"], &index.hash))
                .and_then(|p| body["ExpressionAttributeValues"].get(p))
                .map(key_text),
            _ => None,
        })
        .collect()
}

/// What `index` holds of `item` (nothing when the item lacks the index's keys: sparse).
fn index_entry(
    table: &TableKeys,
    index: &IndexKeys,
    item: &Map<String, Value>,
) -> Option<IndexEntry> {
    let hash = item.get(&index.hash)?;
    if let Some(range) = &index.range {
        item.get(range)?;
    }
    let mut keys: Vec<&str> = vec![&table.hash, &index.hash];
    keys.extend(table.range.as_deref());
    keys.extend(index.range.as_deref());
    let projected: BTreeMap<&String, &Value> = item
        .iter()
        .filter(|(name, _)| {
            keys.contains(&name.as_str())
                || match &index.projection {
                    Projected::All => true,
                    Projected::KeysOnly => false,
                    Projected::Include(names) => names.contains(name),
                }
        })
        .collect();
    let size = projected.iter().map(|(k, v)| k.len() + value_size(v)).sum();
    Some(IndexEntry {
        hash: key_text(hash),
        projected: serde_json::to_string(&projected).unwrap_or_default(),
        size,
    })
}

/// DynamoDB's size of an item in its wire JSON: attribute names plus values.
pub fn item_size(item: &Map<String, Value>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &Value) -> usize {
    let Some((kind, inner)) = v.as_object().and_then(|m| m.iter().next()) else {
        return 0;
    };
    let text = |x: &Value| x.as_str().map_or(0, str::len);
    match kind.as_str() {
        "S" => text(inner),
        "N" => text(inner).div_ceil(2) + 1,
        "B" => text(inner) * 3 / 4,
        "BOOL" | "NULL" => 1,
        "SS" | "NS" | "BS" => inner.as_array().map_or(0, |a| a.iter().map(text).sum()),
        "L" => {
            3 + inner
                .as_array()
                .map_or(0, |a| a.iter().map(|i| 1 + value_size(i)).sum())
        }
        "M" => {
            3 + inner.as_object().map_or(0, |m| {
                m.iter().map(|(k, i)| 1 + k.len() + value_size(i)).sum()
            })
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn deliveries() -> TableKeys {
        TableKeys {
            logical: "DeliveriesTable".into(),
            name: "t-DeliveriesTable".into(),
            arn: "arn:aws:dynamodb:us-east-1:123456789012:table/t-DeliveriesTable".into(),
            hash: "history_key".into(),
            range: Some("delivery_id".into()),
            indexes: vec![IndexKeys {
                name: "by_status".into(),
                hash: "status_key".into(),
                range: Some("delivery_id".into()),
                projection: Projected::Include(vec!["event_id".into()]),
            }],
        }
    }

    fn item(history: &str, id: &str, status: Option<&str>, pad: usize) -> Value {
        let mut item = json!({
            "history_key": {"S": history},
            "delivery_id": {"S": id},
            "event_id": {"S": "evt_1"},
            "attempts": {"S": "x".repeat(pad)},
        });
        if let Some(s) = status {
            item["status_key"] = json!({"S": s});
        }
        item
    }

    fn usage(l: &Ledger, resource: &str, key: &str) -> KeyUsage {
        l.usage()
            .into_iter()
            .find(|u| u.resource == resource && u.key == key)
            .unwrap_or_default()
    }

    #[test]
    fn writes_are_charged_per_kb_of_the_larger_item_and_to_the_index_key() {
        let mut l = Ledger::new(Budgets::AWS, [deliveries()]);
        let now = Instant::now();
        let put = json!({"TableName": "t-DeliveriesTable", "Item": item("v#a", "d1", Some("v#a#pending"), 2500)});
        l.settle("PutItem", &put, 200, &json!({}), None, now);
        // 2.5 KB: 3 write units on the table's key; the index holds the keys and event_id.
        assert_eq!(usage(&l, "DeliveriesTable", "v#a").write_units, 3.0);
        assert_eq!(
            usage(&l, "DeliveriesTable/by_status", "v#a#pending").write_units,
            1.0
        );
        // Updated to a small item that left the index: billed on the larger (before), and
        // a delete under the old index key.
        let update = json!({"TableName": "t-DeliveriesTable", "Key": {"history_key": {"S": "v#a"}, "delivery_id": {"S": "d1"}}});
        let after = item("v#a", "d1", None, 10);
        l.settle(
            "UpdateItem",
            &update,
            200,
            &json!({}),
            after.as_object(),
            now,
        );
        assert_eq!(usage(&l, "DeliveriesTable", "v#a").write_units, 6.0);
        assert_eq!(
            usage(&l, "DeliveriesTable/by_status", "v#a#pending").write_units,
            2.0
        );
        // A failed condition still costs the item's size (now small: 1 unit).
        let failed =
            json!({"__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException"});
        l.settle("UpdateItem", &update, 400, &failed, None, now);
        assert_eq!(usage(&l, "DeliveriesTable", "v#a").write_units, 7.0);
    }

    #[test]
    fn reads_are_charged_per_4kb_and_half_when_eventually_consistent() {
        let mut l = Ledger::new(Budgets::AWS, [deliveries()]);
        let now = Instant::now();
        let big = item("v#a", "d1", None, 9000);
        l.settle(
            "PutItem",
            &json!({"TableName": "t-DeliveriesTable", "Item": big}),
            200,
            &json!({}),
            None,
            now,
        );
        let key = json!({"history_key": {"S": "v#a"}, "delivery_id": {"S": "d1"}});
        // A projection returns less, and the whole item is billed: 9 KB = 3 units, halved.
        let get = json!({"TableName": "t-DeliveriesTable", "Key": key, "ProjectionExpression": "event_id"});
        let small = json!({"Item": {"event_id": {"S": "evt_1"}, "history_key": {"S": "v#a"}, "delivery_id": {"S": "d1"}}});
        l.settle("GetItem", &get, 200, &small, None, now);
        assert_eq!(usage(&l, "DeliveriesTable", "v#a").read_units, 1.5);
        let query = json!({"TableName": "t-DeliveriesTable", "KeyConditionExpression": "history_key = :h AND delivery_id BETWEEN :a AND :b",
            "ExpressionAttributeValues": {":h": {"S": "v#a"}, ":a": {"S": "0"}, ":b": {"S": "z"}}, "ConsistentRead": true});
        let answer = json!({"Items": [item("v#a", "d2", None, 3000), item("v#a", "d3", None, 3000)], "ScannedCount": 2});
        l.settle("Query", &query, 200, &answer, None, now);
        // 6 KB read consistently: 2 units.
        assert_eq!(usage(&l, "DeliveriesTable", "v#a").read_units, 3.5);
    }

    #[test]
    fn a_key_past_its_budget_is_refused_and_other_keys_are_not() {
        let mut l = Ledger::new(Budgets::scaled(0.002), [deliveries()]); // 2 write units a second
        let now = Instant::now();
        let put =
            |h: &str| json!({"TableName": "t-DeliveriesTable", "Item": item(h, "d1", None, 1500)});
        assert!(matches!(l.plan("PutItem", &put("v#a"), now), Plan::Forward));
        l.settle("PutItem", &put("v#a"), 200, &json!({}), None, now);
        // Two units spent: the next write of that key is refused, with AWS's reason.
        match l.plan("PutItem", &put("v#a"), now) {
            Plan::Refuse(t) => {
                assert_eq!(t.reason, "TableWriteKeyRangeThroughputExceeded");
                assert!(t.resource_arn.ends_with("table/t-DeliveriesTable"));
            }
            _ => panic!("not refused"),
        }
        assert!(matches!(l.plan("PutItem", &put("v#b"), now), Plan::Forward));
        // A second later, the key has its budget again.
        let later = now + Duration::from_millis(1100);
        assert!(matches!(
            l.plan("PutItem", &put("v#a"), later),
            Plan::Forward
        ));
        assert_eq!(usage(&l, "DeliveriesTable", "v#a").throttled, 1);
    }

    #[test]
    fn a_batch_forwards_the_keys_with_budget_and_leaves_the_rest_unprocessed() {
        let mut l = Ledger::new(Budgets::scaled(0.001), [deliveries()]); // 3 read units a second
        let now = Instant::now();
        let hot = json!({"TableName": "t-DeliveriesTable", "Key": {"history_key": {"S": "v#hot"}, "delivery_id": {"S": "d"}}, "ConsistentRead": true});
        for _ in 0..3 {
            l.settle("GetItem", &hot, 200, &json!({}), None, now);
        }
        let key = |h: &str| json!({"history_key": {"S": h}, "delivery_id": {"S": "d"}});
        let batch = json!({"RequestItems": {"t-DeliveriesTable": {"Keys": [key("v#hot"), key("v#cold")], "ConsistentRead": true}}});
        match l.plan("BatchGetItem", &batch, now) {
            Plan::Partial { body, unprocessed } => {
                assert_eq!(
                    body["RequestItems"]["t-DeliveriesTable"]["Keys"],
                    json!([key("v#cold")])
                );
                assert_eq!(
                    unprocessed["t-DeliveriesTable"]["Keys"],
                    json!([key("v#hot")])
                );
                assert_eq!(unprocessed["t-DeliveriesTable"]["ConsistentRead"], true);
            }
            _ => panic!("not partial"),
        }
    }

    #[test]
    fn a_query_names_its_partition_through_aliases() {
        let body = json!({"KeyConditionExpression": "#k = :k AND begins_with(key_id, :p)",
            "ExpressionAttributeNames": {"#k": "venue_id"},
            "ExpressionAttributeValues": {":k": {"S": "v1"}, ":p": {"S": "pwk_"}}});
        assert_eq!(query_hash(&body, "venue_id").as_deref(), Some("v1"));
        assert_eq!(query_hash(&body, "key_id"), None);
        let update = "SET status_key = :sk, attempts = list_append(attempts, :a) REMOVE x";
        assert_eq!(assigned(update, &Value::Null, "status_key"), Some(":sk"));
        assert_eq!(assigned("SET n = n + :one", &Value::Null, "n"), None);
    }
}
