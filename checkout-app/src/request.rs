//! The checkout request: parsed from JSON by hand so every mistake gets a
//! precise message naming the field.

use std::collections::HashSet;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{OpenApi, RefOr};
use uuid::Uuid;

/// Limits on a checkout request (configurable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most lines in one order.
    pub max_items: usize,
    /// Most units of one product in one order.
    pub max_quantity: u32,
    /// Longest user id.
    pub max_user_id: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_items: 100,
            max_quantity: 1_000,
            max_user_id: 128,
        }
    }
}

/// One requested line. `price`, if the client sent one, must match the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestedItem {
    /// The product (a catalogue id, `GET /api/products`).
    pub product_id: Uuid,
    /// Units: at least 1, at most 1000 by default (configurable).
    #[schema(minimum = 1, example = 2)]
    pub quantity: u32,
    /// The unit price the client believes, a decimal string (a JSON number is
    /// accepted too). Checked against the catalogue, never charged: a
    /// different price is refused with 422.
    #[schema(value_type = Option<String>, pattern = r"^[0-9]+(\.[0-9]+)?$", example = "29.99")]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub price: Option<Decimal>,
}

/// A validated checkout request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "userId": "user-123",
    "items": [{"productId": "660facf7-b9cf-417a-8ee1-27afe2fb2c72", "quantity": 2, "price": "29.99"}]
}))]
pub struct CheckoutRequest {
    /// The buyer: not blank, no control characters, at most 128 characters
    /// by default (configurable). Surrounding spaces are trimmed.
    #[schema(
        min_length = 1,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*\S[^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub user_id: String,
    /// The lines: at least one, at most 100 by default (configurable), each
    /// product at most once.
    #[schema(min_items = 1)]
    pub items: Vec<RequestedItem>,
}

/// Writes `limits` into the `CheckoutRequest` and `RequestedItem` schemas of
/// `openapi`: `userId`'s `maxLength`, `items`' `maxItems` and `quantity`'s
/// `maximum`, so a service's document states the limits it enforces.
pub fn describe_limits(openapi: &mut OpenApi, limits: &Limits) {
    let Some(components) = openapi.components.as_mut() else {
        return;
    };
    if let Some(RefOr::T(Schema::Object(request))) = components.schemas.get_mut("CheckoutRequest") {
        if let Some(RefOr::T(Schema::Object(user))) = request.properties.get_mut("userId") {
            user.max_length = Some(limits.max_user_id);
        }
        if let Some(RefOr::T(Schema::Array(items))) = request.properties.get_mut("items") {
            items.max_items = Some(limits.max_items);
        }
    }
    if let Some(RefOr::T(Schema::Object(item))) = components.schemas.get_mut("RequestedItem")
        && let Some(RefOr::T(Schema::Object(quantity))) = item.properties.get_mut("quantity")
    {
        let max = usize::try_from(limits.max_quantity).unwrap_or(usize::MAX);
        quantity.maximum = Some(utoipa::Number::UInt(max));
    }
}

/// Validates a JSON body against `limits`.
///
/// # Errors
/// A message naming the first offending field.
pub fn parse(body: &Value, limits: &Limits) -> Result<CheckoutRequest, String> {
    let object = body.as_object().ok_or("the body must be a JSON object")?;
    let user_id = match object.get("userId") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(Value::String(_)) => return Err("userId must not be empty".into()),
        Some(_) => return Err("userId must be a string".into()),
        None => return Err("userId is required".into()),
    };
    if user_id.chars().count() > limits.max_user_id {
        return Err(format!(
            "userId must be at most {} characters",
            limits.max_user_id
        ));
    }
    if user_id.chars().any(char::is_control) {
        return Err("userId must not contain control characters".into());
    }
    let items = match object.get("items") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err("items must be an array".into()),
        None => return Err("items is required".into()),
    };
    if items.is_empty() {
        return Err("items must contain at least one item".into());
    }
    if items.len() > limits.max_items {
        return Err(format!(
            "an order may have at most {} items, got {}",
            limits.max_items,
            items.len()
        ));
    }
    let mut seen = HashSet::new();
    let mut parsed = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item = parse_item(item, i, limits)?;
        if !seen.insert(item.product_id) {
            return Err(format!(
                "items[{i}].productId repeats an earlier item; combine the quantities"
            ));
        }
        parsed.push(item);
    }
    Ok(CheckoutRequest {
        user_id,
        items: parsed,
    })
}

fn parse_item(item: &Value, i: usize, limits: &Limits) -> Result<RequestedItem, String> {
    let object = item
        .as_object()
        .ok_or(format!("items[{i}] must be an object"))?;
    let product_id = match object.get("productId") {
        Some(Value::String(s)) => {
            Uuid::parse_str(s.trim()).map_err(|_| format!("items[{i}].productId must be a UUID"))?
        }
        Some(_) => return Err(format!("items[{i}].productId must be a string")),
        None => return Err(format!("items[{i}].productId is required")),
    };
    let quantity = match object.get("quantity") {
        Some(Value::Number(n)) => {
            // A whole number, also when written with a zero fraction (`2.0`):
            // JSON Schema's `integer`, as the OpenAPI document declares it.
            let whole = n
                .as_u64()
                .map(i128::from)
                .or_else(|| n.as_i64().map(i128::from))
                .or_else(|| {
                    n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i128) // saturates: huge values stay out of range
                });
            match whole {
                None => return Err(format!("items[{i}].quantity must be a whole number")),
                Some(q) if q < 1 => {
                    return Err(format!("items[{i}].quantity must be at least 1"));
                }
                Some(q) => u32::try_from(q)
                    .ok()
                    .filter(|q| *q <= limits.max_quantity)
                    .ok_or_else(|| {
                        format!(
                            "items[{i}].quantity must be at most {}",
                            limits.max_quantity
                        )
                    })?,
            }
        }
        Some(_) => return Err(format!("items[{i}].quantity must be a number")),
        None => return Err(format!("items[{i}].quantity is required")),
    };
    let price = match object.get("price") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_price(s, i)?),
        Some(Value::Number(n)) => Some(parse_price(&n.to_string(), i)?),
        Some(_) => {
            return Err(format!(
                "items[{i}].price must be a decimal string such as \"29.99\""
            ));
        }
    };
    Ok(RequestedItem {
        product_id,
        quantity,
        price,
    })
}

fn parse_price(text: &str, i: usize) -> Result<Decimal, String> {
    let price: Decimal = text
        .trim()
        .parse()
        .map_err(|_| format!("items[{i}].price must be a decimal such as \"29.99\""))?;
    if price.is_sign_negative() {
        return Err(format!("items[{i}].price must not be negative"));
    }
    Ok(price)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn err(body: Value) -> String {
        parse(&body, &Limits::default()).expect_err("invalid")
    }

    const P: &str = "660facf7-b9cf-417a-8ee1-27afe2fb2c72";

    #[test]
    fn the_seed_request_parses() {
        let r = parse(
            &json!({"userId": "user-123", "items": [{"productId": P, "quantity": 2, "price": "29.99"}]}),
            &Limits::default(),
        )
        .expect("valid");
        assert_eq!(r.user_id, "user-123");
        assert_eq!(r.items[0].quantity, 2);
        assert_eq!(r.items[0].price, Some("29.99".parse().expect("decimal")));
    }

    #[test]
    fn a_whole_quantity_with_a_zero_fraction_is_accepted() {
        // JSON Schema's `integer` (the OpenAPI document) includes `3.0`.
        let r = parse(
            &json!({"userId": "u", "items": [{"productId": P, "quantity": 3.0}]}),
            &Limits::default(),
        )
        .expect("valid");
        assert_eq!(r.items[0].quantity, 3);
    }

    #[test]
    fn every_bad_field_is_named() {
        assert_eq!(err(json!([])), "the body must be a JSON object");
        assert_eq!(err(json!({"items": []})), "userId is required");
        assert_eq!(
            err(json!({"userId": " ", "items": []})),
            "userId must not be empty"
        );
        assert_eq!(
            err(json!({"userId": 5, "items": []})),
            "userId must be a string"
        );
        assert_eq!(err(json!({"userId": "u"})), "items is required");
        assert_eq!(
            err(json!({"userId": "u", "items": {}})),
            "items must be an array"
        );
        assert_eq!(
            err(json!({"userId": "u", "items": []})),
            "items must contain at least one item"
        );
        assert_eq!(
            err(json!({"userId": "u", "items": [1]})),
            "items[0] must be an object"
        );
        assert_eq!(
            err(json!({"userId": "u", "items": [{"quantity": 1}]})),
            "items[0].productId is required"
        );
        assert_eq!(
            err(
                json!({"userId": "u", "items": [{"productId": "1; DROP TABLE products", "quantity": 1}]})
            ),
            "items[0].productId must be a UUID"
        );
        assert_eq!(
            err(json!({"userId": "u", "items": [{"productId": P}]})),
            "items[0].quantity is required"
        );
        assert_eq!(
            err(json!({"userId": "u", "items": [{"productId": P, "quantity": 0}]})),
            "items[0].quantity must be at least 1"
        );
        assert_eq!(
            err(json!({"userId": "u", "items": [{"productId": P, "quantity": -3}]})),
            "items[0].quantity must be at least 1"
        );
        assert_eq!(
            err(json!({"userId": "u", "items": [{"productId": P, "quantity": 1.5}]})),
            "items[0].quantity must be a whole number"
        );
        assert_eq!(
            err(json!({"userId": "u", "items": [{"productId": P, "quantity": 0.0}]})),
            "items[0].quantity must be at least 1"
        );
        assert_eq!(
            err(json!({"userId": "u", "items": [{"productId": P, "quantity": 1e300}]})),
            "items[0].quantity must be at most 1000"
        );
        assert_eq!(
            err(json!({"userId": "u", "items": [{"productId": P, "quantity": "2"}]})),
            "items[0].quantity must be a number"
        );
        assert_eq!(
            err(
                json!({"userId": "u", "items": [{"productId": P, "quantity": 18446744073709551615u64}]})
            ),
            "items[0].quantity must be at most 1000"
        );
        assert_eq!(
            err(json!({"userId": "u", "items": [{"productId": P, "quantity": 1, "price": "abc"}]})),
            "items[0].price must be a decimal such as \"29.99\""
        );
        assert_eq!(
            err(json!({"userId": "u", "items": [{"productId": P, "quantity": 1, "price": "-1"}]})),
            "items[0].price must not be negative"
        );
        assert_eq!(
            err(
                json!({"userId": "u", "items": [{"productId": P, "quantity": 1}, {"productId": P, "quantity": 1}]})
            ),
            "items[1].productId repeats an earlier item; combine the quantities"
        );
    }

    #[test]
    fn too_many_items_are_refused() {
        let items: Vec<Value> = (0..101)
            .map(|_| json!({"productId": Uuid::new_v4().to_string(), "quantity": 1}))
            .collect();
        assert_eq!(
            err(json!({"userId": "u", "items": items})),
            "an order may have at most 100 items, got 101"
        );
    }
}
