//! The API server's static cost estimate of a rule, after cel-go's `checker` cost
//! model with the size estimates apiextensions gives it.
//!
//! A rule's cost is the worst case of one evaluation: 1 per variable, field and call,
//! a tenth of a unit per character a string operation may walk, one unit per list item
//! `in` may compare, and a comprehension's body times the items it iterates. Sizes come
//! from the schema: `maxLength` (times 4: bytes of a rune), `maxItems`,
//! `maxProperties`; unbounded ones are what fits in one 3 MiB request. The API server
//! multiplies that by how many times the node can occur in one object (its
//! cardinality) and compares it with its budgets.

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use serde_json::Value;

use crate::{MAX_REQUEST_SIZE_BYTES, Rule};

/// How many times a node can occur in one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cardinality {
    Bounded(u64),
    /// Under a list or map without maxItems/maxProperties.
    Unbounded,
}

impl Cardinality {
    /// The cardinality of a child that occurs `count` times in each of these.
    pub fn times(self, count: Cardinality, _child: &Value) -> Self {
        match (self, count) {
            (Self::Bounded(a), Self::Bounded(b)) => Self::Bounded(a.saturating_mul(b)),
            _ => Self::Unbounded,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Self::Bounded(1) => "one time".into(),
            Self::Bounded(n) => format!("{n} times"),
            Self::Unbounded => {
                "unbounded number of times (a list or map above it has no maxItems/maxProperties)"
                    .into()
            }
        }
    }
}

/// How many children a list or map node can hold.
pub fn max_items(node: &Value) -> Cardinality {
    let key = if node.get("items").is_some() {
        "maxItems"
    } else {
        "maxProperties"
    };
    match node.get(key).and_then(Value::as_u64) {
        Some(n) => Cardinality::Bounded(n),
        None => Cardinality::Unbounded,
    }
}

fn ty(node: &Value) -> &str {
    node.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn int_or_string(node: &Value) -> bool {
    node.get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
}

/// The smallest JSON a value of this schema serializes to, as apiextensions counts it.
pub fn min_serialized_size(node: &Value) -> u64 {
    if int_or_string(node) {
        return 1;
    }
    match ty(node) {
        "object" if node.get("properties").is_some() => {
            let required = crate::schema::required(node);
            let props = node.get("properties").and_then(Value::as_object);
            2 + props
                .into_iter()
                .flatten()
                .filter(|(name, child)| {
                    required.contains(&name.as_str()) && child.get("default").is_none()
                })
                .map(|(name, child)| name.len() as u64 + min_serialized_size(child) + 4)
                .sum::<u64>()
        }
        "boolean" => 4,
        "integer" | "number" => 1,
        _ => 2,
    }
}

/// The largest size (characters of a string, items of a list or map) a value of this
/// schema can have in one request.
pub fn max_elements(node: &Value) -> u64 {
    let max = MAX_REQUEST_SIZE_BYTES - 2;
    if int_or_string(node) {
        return max;
    }
    match ty(node) {
        "string" => {
            if let Some(n) = node.get("maxLength").and_then(Value::as_u64) {
                return n.saturating_mul(4);
            }
            if let Some(choices) = node.get("enum").and_then(Value::as_array) {
                return choices
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|s| s.len() as u64)
                    .max()
                    .unwrap_or(0);
            }
            match node.get("format").and_then(Value::as_str) {
                Some("duration") => 32,
                Some("date") => 12,
                Some("date-time") => 37,
                _ => max,
            }
        }
        "array" => node
            .get("maxItems")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| max / (node.get("items").map_or(2, min_serialized_size) + 1)),
        "object" => match node.get("additionalProperties").filter(|v| v.is_object()) {
            Some(values) => node
                .get("maxProperties")
                .and_then(Value::as_u64)
                .unwrap_or_else(|| max / (min_serialized_size(values) + 6)),
            None => 0,
        },
        _ => 0,
    }
}

/// The rule's estimated cost on its node times the node's cardinality, as the API
/// server compares it with its per-rule budget.
pub fn rule_cost(node: &Value, rule: &Rule, cardinality: Cardinality) -> u64 {
    let times = match cardinality {
        Cardinality::Bounded(n) => n,
        Cardinality::Unbounded => MAX_REQUEST_SIZE_BYTES / (min_serialized_size(node) + 1),
    };
    expression_cost(node, rule.program.expression()).saturating_mul(times)
}

/// The worst-case cost of one evaluation of `expr` with `self` of schema `node`.
pub fn expression_cost(node: &Value, expr: &IdedExpr) -> u64 {
    Estimator {
        root: node,
        locals: Vec::new(),
    }
    .cost(expr)
}

static UNBOUNDED_STRING: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| serde_json::json!({"type": "string"}));

/// Calls whose result is a bool or a number.
const SCALAR_RESULTS: &[&str] = &[
    "_==_",
    "_!=_",
    "_<_",
    "_<=_",
    "_>_",
    "_>=_",
    "_&&_",
    "_||_",
    "!_",
    "-_",
    "_-_",
    "_*_",
    "_/_",
    "_%_",
    "@in",
    "@not_strictly_false",
    "size",
    "startsWith",
    "endsWith",
    "contains",
    "matches",
    "int",
    "uint",
    "double",
];

struct Estimator<'a> {
    root: &'a Value,
    /// Comprehension variables bound to the schema of the items they iterate.
    locals: Vec<(String, Option<&'a Value>)>,
}

/// `x` times a cost factor of `num/den`, rounded up as cel-go does.
fn factor(x: u64, num: u64, den: u64) -> u64 {
    x.saturating_mul(num).div_ceil(den)
}

impl<'a> Estimator<'a> {
    /// The schema node an expression reads, when it is a path from `self`.
    fn node_of(&self, e: &IdedExpr) -> Option<&'a Value> {
        match &e.expr {
            // The API server sizes `oldSelf` by the same schema as `self`.
            Expr::Ident(name) if name == "self" || name == "oldSelf" => Some(self.root),
            Expr::Ident(name) => self
                .locals
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .and_then(|(_, node)| *node),
            Expr::Select(sel) if !sel.test => {
                // Rules see `metadata.name` and `generateName` as unbounded strings,
                // whatever the CRD's schema says of `metadata`.
                if let Expr::Select(m) = &sel.operand.expr
                    && m.field == "metadata"
                    && matches!(&m.operand.expr, Expr::Ident(n) if n == "self" || n == "oldSelf")
                    && matches!(sel.field.as_str(), "name" | "generateName")
                {
                    return Some(&*UNBOUNDED_STRING);
                }
                let parent = self.node_of(&sel.operand)?;
                parent
                    .get("properties")
                    .and_then(|p| p.get(&sel.field))
                    .or_else(|| parent.get("additionalProperties").filter(|v| v.is_object()))
            }
            Expr::Call(call) if call.func_name == "_[_]" && call.args.len() == 2 => {
                let parent = self.node_of(&call.args[0])?;
                parent
                    .get("items")
                    .or_else(|| parent.get("additionalProperties").filter(|v| v.is_object()))
            }
            _ => None,
        }
    }

    /// The largest size of the value of `e`; unknown is unbounded, as in cel-go.
    fn size(&self, e: &IdedExpr) -> u64 {
        if let Some(node) = self.node_of(e) {
            return max_elements(node);
        }
        match &e.expr {
            Expr::Literal(LiteralValue::String(s)) => s.chars().count() as u64,
            Expr::Literal(LiteralValue::Bytes(b)) => b.len() as u64,
            Expr::Literal(_) => 1,
            Expr::List(list) => list.elements.len() as u64,
            Expr::Call(call) if call.func_name == "_+_" && call.args.len() == 2 => self
                .size(&call.args[0])
                .saturating_add(self.size(&call.args[1])),
            // Scalars (what comparisons, tests and arithmetic give) have size 1.
            Expr::Select(sel) if sel.test => 1,
            Expr::Call(call) if SCALAR_RESULTS.contains(&call.func_name.as_str()) => 1,
            _ => u64::MAX,
        }
    }

    fn cost(&mut self, e: &IdedExpr) -> u64 {
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => 0,
            Expr::Ident(_) => 1,
            Expr::Select(sel) => self.cost(&sel.operand).saturating_add(1),
            Expr::List(list) => list
                .elements
                .iter()
                .fold(10, |acc, el| acc.saturating_add(self.cost(el))),
            Expr::Map(_) => 30,
            Expr::Struct(_) => 40,
            Expr::Comprehension(comp) => {
                let range = self.cost(&comp.iter_range);
                let init = self.cost(&comp.accu_init);
                let count = self.size(&comp.iter_range);
                let item = self.node_of(&comp.iter_range).and_then(|n| n.get("items"));
                self.locals.push((comp.iter_var.clone(), item));
                let body = self
                    .cost(&comp.loop_cond)
                    .saturating_add(self.cost(&comp.loop_step));
                self.locals.pop();
                let result = self.cost(&comp.result);
                range
                    .saturating_add(init)
                    .saturating_add(result)
                    .saturating_add(count.saturating_mul(body))
            }
            Expr::Call(call) => {
                let args: u64 = call
                    .target
                    .iter()
                    .map(|t| &**t)
                    .chain(call.args.iter())
                    .map(|a| self.cost(a))
                    .fold(0, u64::saturating_add);
                let target = call.target.as_deref();
                let own = match (call.func_name.as_str(), target, call.args.as_slice()) {
                    ("_&&_" | "_||_", _, _) => 0,
                    ("_?_:_", _, [c, t, f]) => {
                        // Only one branch runs: the condition plus the dearer branch.
                        let (c, t, f) = (self.cost(c), self.cost(t), self.cost(f));
                        return c.saturating_add(t.max(f));
                    }
                    ("startsWith" | "endsWith", Some(_), [prefix]) => {
                        factor(self.size(prefix), 1, 10)
                    }
                    ("@in", _, [_, list]) => self.size(list),
                    ("matches", Some(s), [re]) => factor(self.size(s).saturating_add(1), 1, 10)
                        .saturating_mul(factor(self.size(re), 1, 4)),
                    ("contains", Some(s), [sub]) => {
                        factor(self.size(s), 1, 10).saturating_mul(factor(self.size(sub), 1, 10))
                    }
                    ("_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_", _, [a, b]) => {
                        factor(self.size(a).min(self.size(b)), 1, 10)
                    }
                    ("_+_", _, [a, b]) if self.is_string(a) || self.is_string(b) => {
                        factor(self.size(a).saturating_add(self.size(b)), 1, 10)
                    }
                    _ => 1,
                };
                own.saturating_add(args)
            }
        }
    }

    fn is_string(&self, e: &IdedExpr) -> bool {
        matches!(&e.expr, Expr::Literal(LiteralValue::String(_)))
            || self.node_of(e).is_some_and(|n| ty(n) == "string")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cost_of(node: Value, rule: &str) -> u64 {
        let env = crate::cel_env();
        let program = env.compile(rule).unwrap();
        expression_cost(&node, program.expression())
    }

    #[test]
    fn a_bounded_string_costs_a_tenth_of_its_bytes_to_compare() {
        let node = json!({"type": "string", "maxLength": 63});
        // 63 runes are up to 252 bytes: 26 units to compare, 1 for `self`.
        assert_eq!(cost_of(node, "self == 'x'"), 1 + 1);
        let node = json!({"type": "object", "properties": {"a": {"type": "string", "maxLength": 63}, "b": {"type": "string", "maxLength": 63}}});
        assert_eq!(cost_of(node, "self.a == self.b"), 26 + 2 + 2);
    }

    #[test]
    fn an_unbounded_list_in_a_comprehension_costs_what_fits_in_a_request() {
        let unbounded = json!({"type": "array", "items": {"type": "string"}});
        let bounded =
            json!({"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 10}});
        let rule = "self.all(x, x.startsWith('a'))";
        assert!(cost_of(unbounded, rule) > 1_000_000);
        assert!(cost_of(bounded, rule) < 100);
    }

    #[test]
    fn matches_costs_the_string_times_the_regex() {
        let node = json!({"type": "string"});
        let cost = cost_of(node, "self.matches('^[a-z]+$')");
        // (3 MiB - 2 + 1) / 10 rounded up, times 8 / 4, plus 1 for `self`.
        assert_eq!(cost, 314_573 * 2 + 1);
    }
}
