//! `X-Filter` handling for the fake Linode API: checks the header's JSON shape the way
//! Linode does (filterable fields per collection, operators, tags as a string or operator
//! object, never an array) and applies a filter to a collection's items.

use serde_json::Value;

/// Fields Linode lets you filter each collection on (spec `x-linode-filterable`).
pub fn filterable(collection: &str) -> Option<&'static [&'static str]> {
    Some(match collection {
        "/linode/instances" => &[
            "group", "id", "ipv4", "label", "region", "tags", "image", "type",
        ],
        "/networking/firewalls" => &["created", "id", "label", "tags", "updated"],
        "/linode/types" => &[
            "class",
            "disk",
            "gpus",
            "label",
            "memory",
            "network_out",
            "transfer",
            "vcpus",
        ],
        "/regions" => &["country", "site-type"],
        "/images" => &[
            "deprecated",
            "is_public",
            "label",
            "size",
            "status",
            "tags",
            "type",
            "vendor",
        ],
        _ => return None,
    })
}

/// Parses and checks an `X-Filter` value. `Err` is Linode's reason text (field `X-Filter`).
pub fn parse(collection: &str, raw: &str) -> Result<Value, String> {
    let value: Value =
        serde_json::from_str(raw).map_err(|_| "X-Filter must be a JSON object".to_owned())?;
    let Some(fields) = filterable(collection) else {
        return Err(format!("{collection} cannot be filtered"));
    };
    check_object(&value, fields)?;
    Ok(value)
}

fn check_object(value: &Value, fields: &[&str]) -> Result<(), String> {
    let Value::Object(map) = value else {
        return Err("X-Filter must be a JSON object".into());
    };
    for (key, v) in map {
        match key.as_str() {
            "+and" | "+or" => {
                let Value::Array(items) = v else {
                    return Err(format!("{key} must be an array"));
                };
                for item in items {
                    check_object(item, fields)?;
                }
            }
            "+order_by" => match v.as_str() {
                Some(f) if fields.contains(&f) => {}
                _ => return Err(format!("Cannot order by {v}")),
            },
            "+order" => {
                if !matches!(v.as_str(), Some("asc" | "desc")) {
                    return Err("+order must be asc or desc".into());
                }
            }
            field if fields.contains(&field) => check_condition(field, v)?,
            field => return Err(format!("Cannot filter on {field}")),
        }
    }
    Ok(())
}

fn check_condition(field: &str, v: &Value) -> Result<(), String> {
    match v {
        Value::Array(_) if field == "tags" => Err("Tags filter must be a string or dict".into()),
        Value::Array(_) | Value::Null => Err(format!("Invalid filter value for {field}")),
        Value::Object(ops) => {
            for (op, arg) in ops {
                let ok = match op.as_str() {
                    "+contains" | "+neq" => arg.is_string(),
                    "+gt" | "+gte" | "+lt" | "+lte" => arg.is_number(),
                    _ => false,
                };
                if !ok {
                    return Err(format!("Invalid operator {op} for {field}"));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Whether `item` passes a checked filter.
pub fn matches(filter: &Value, item: &Value) -> bool {
    let Value::Object(map) = filter else {
        return true;
    };
    map.iter().all(|(key, cond)| match key.as_str() {
        "+and" => cond
            .as_array()
            .into_iter()
            .flatten()
            .all(|f| matches(f, item)),
        "+or" => cond
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| matches(f, item)),
        "+order_by" | "+order" => true,
        field => field_matches(item.get(field).unwrap_or(&Value::Null), cond),
    })
}

fn field_matches(actual: &Value, cond: &Value) -> bool {
    // List-valued fields (tags, ipv4) match when any element matches.
    if let Value::Array(items) = actual {
        return items.iter().any(|a| field_matches(a, cond));
    }
    match cond {
        Value::Object(ops) => ops.iter().all(|(op, arg)| op_matches(actual, op, arg)),
        _ => actual == cond,
    }
}

fn op_matches(actual: &Value, op: &str, arg: &Value) -> bool {
    let num = |v: &Value| v.as_f64();
    match op {
        "+contains" => match (actual.as_str(), arg.as_str()) {
            (Some(a), Some(b)) => a.contains(b),
            _ => false,
        },
        "+neq" => actual != arg,
        "+gt" => matches!((num(actual), num(arg)), (Some(a), Some(b)) if a > b),
        "+gte" => matches!((num(actual), num(arg)), (Some(a), Some(b)) if a >= b),
        "+lt" => matches!((num(actual), num(arg)), (Some(a), Some(b)) if a < b),
        "+lte" => matches!((num(actual), num(arg)), (Some(a), Some(b)) if a <= b),
        _ => false,
    }
}
