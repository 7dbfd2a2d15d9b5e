//! The small pieces of OData v4 / Dataverse the client needs: string literals in `$filter`, query
//! encoding, ids from `OData-EntityId`, and Dataverse's error bodies turned into `CrmError`s that
//! name the property or privilege at fault.

use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::ports::crm::CrmError;

/// A string literal for `$filter`: single quotes around it, and each quote inside doubled
/// (`O'Bryan` → `'O''Bryan'`). An unescaped quote ends the literal early and Dataverse answers
/// "There is an unterminated literal".
pub fn string_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Percent-encodes a query value: everything but `A-Z a-z 0-9 - . _ ~`. A raw `+` would reach
/// Dataverse as a space (`a+b@example.com` would never match), and `&`, `=`, `#`, `@`, `/`, `;`,
/// `,`, `$`, `?` and `:` in a literal would break the query string, so all of them are encoded.
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?$select=..&$filter=..` from option names and raw values.
pub fn query(options: &[(&str, &str)]) -> String {
    if options.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = options.iter().map(|(k, v)| format!("{k}={}", encode_query_value(v))).collect();
    format!("?{}", parts.join("&"))
}

/// The GUID in the last `(...)` of an `OData-EntityId` header
/// (`https://org.crm.dynamics.com/api/data/v9.2/contacts(7eb6...)`).
pub fn id_from_entity_id(header: &str) -> Option<String> {
    let open = header.rfind('(')?;
    let close = header[open..].find(')')? + open;
    let id = header[open + 1..close].trim();
    (!id.is_empty()).then(|| id.to_ascii_lowercase())
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Dataverse's `{"error":{"code","message"}}`, or what can be said without it.
pub fn parse_error(status: u16, body: &[u8]) -> (String, String) {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error.code, clean_message(&b.error.message)),
        Err(_) if body.is_empty() => (String::new(), format!("HTTP {status} with no error body")),
        Err(_) => (String::new(), format!("HTTP {status}: {}", clean_message(&String::from_utf8_lossy(body)))),
    }
}

/// The message without the .NET stack trace some errors carry, one line, bounded.
fn clean_message(message: &str) -> String {
    let first = message.split("   at ").next().unwrap_or(message);
    let one_line: String = first.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut end = one_line.len().min(1000);
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    one_line[..end].to_owned()
}

/// Whether an error code means "a record with this key exists" (creating with an id we chose).
pub fn is_duplicate_key(code: &str) -> bool {
    ["0x80040237", "0x80060892"].iter().any(|c| c.eq_ignore_ascii_case(code))
}

static PRIVILEGE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\b(prv[A-Za-z]+)\b").expect("valid regex"));
static PROPERTY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"Invalid property '([^']+)'",
        r"|[Pp]roperty named '([^']+)'",
        r"|undeclared property '([^']+)'",
        r"|[Tt]he property '([^']+)' does not exist",
        r"|of '([^']+)' on record of type",
        r"|length of the '([^']+)' attribute",
    ))
    .expect("valid regex")
});
static LITERAL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"Cannot convert the literal '([^']*)' to the expected type").expect("valid regex"));

/// The property a 400 is about: named in the message, or found through the literal Dataverse
/// could not convert (its message for label text in a choice column names only the value).
fn property_of(code: &str, message: &str, sent: Option<&Value>) -> Option<String> {
    if let Some(c) = PROPERTY.captures(message) {
        return c.iter().skip(1).flatten().next().map(|m| m.as_str().to_owned());
    }
    if ["0x80044410", "0x8004440f"].iter().any(|c| c.eq_ignore_ascii_case(code)) {
        return Some("customerid".to_owned());
    }
    let literal = LITERAL.captures(message)?.get(1)?.as_str();
    let object = sent?.as_object()?;
    object.iter().find(|(_, v)| v.as_str() == Some(literal)).map(|(k, _)| k.clone())
}

/// Maps a refused request to a `CrmError` (429 and 5xx never get here: the client retries them).
pub fn error_for(operation: &'static str, status: u16, body: &[u8], sent: Option<&Value>) -> CrmError {
    let (code, message) = parse_error(status, body);
    match status {
        403 => match PRIVILEGE.captures(&message).and_then(|c| c.get(1)) {
            Some(p) => CrmError::MissingPrivilege { operation, privilege: p.as_str().to_owned(), message },
            None => CrmError::AccessDenied { operation, code, message },
        },
        404 => CrmError::NotFound { operation, code, message },
        _ if code.eq_ignore_ascii_case("0x80040217") => CrmError::NotFound { operation, code, message },
        400 => match property_of(&code, &message, sent) {
            Some(property) => CrmError::InvalidProperty { operation, property, code, message },
            None => CrmError::Rejected { operation, status, code, message },
        },
        _ => CrmError::Rejected { operation, status, code, message },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn filter_literals_double_quotes_and_encode_specials() {
        assert_eq!(string_literal("O'Bryan"), "'O''Bryan'");
        assert_eq!(string_literal("''"), "''''''");
        let filter = format!("emailaddress1 eq {}", string_literal("a+b'c@example.com"));
        assert_eq!(encode_query_value(&filter), "emailaddress1%20eq%20%27a%2Bb%27%27c%40example.com%27");
        for (raw, encoded) in [
            ("$", "%24"),
            ("&", "%26"),
            ("+", "%2B"),
            (",", "%2C"),
            ("/", "%2F"),
            (":", "%3A"),
            (";", "%3B"),
            ("=", "%3D"),
            ("?", "%3F"),
            ("@", "%40"),
            ("#", "%23"),
            ("%", "%25"),
            (" ", "%20"),
            ("é", "%C3%A9"),
        ] {
            assert_eq!(encode_query_value(raw), encoded, "{raw}");
        }
        assert_eq!(encode_query_value("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(query(&[("$select", "a,b"), ("$top", "1")]), "?$select=a%2Cb&$top=1");
    }

    #[test]
    fn ids_come_from_the_entity_id_header() {
        assert_eq!(
            id_from_entity_id(
                "https://contoso.crm.dynamics.com/api/data/v9.2/contacts(7EB682F1-CA75-E511-80D4-00155D2A68D1)"
            )
            .as_deref(),
            Some("7eb682f1-ca75-e511-80d4-00155d2a68d1")
        );
        assert_eq!(id_from_entity_id("no id"), None);
        assert_eq!(id_from_entity_id("x()"), None);
    }

    #[test]
    fn errors_name_the_privilege_or_the_property() {
        let body = json!({"error":{"code":"0x80040220","message":"Principal user (Id=1, type=8, roleCount=1, privilegeCount=5, accessMode=4), is missing prvCreateIncident privilege (Id=2) on OTC=112 for entity 'incident'."}});
        let e = error_for("create incident", 403, body.to_string().as_bytes(), None);
        assert_eq!(e.missing_privilege(), Some("prvCreateIncident"));
        assert!(e.to_string().contains("lacks the prvCreateIncident privilege"), "{e}");

        let body = json!({"error":{"code":"0x8004431A","message":"A validation error occurred. The value 5 of 'new_channel' on record of type 'incident' is outside the valid range. Accepted Values: 100000000,100000001."}});
        match error_for("create incident", 400, body.to_string().as_bytes(), None) {
            CrmError::InvalidProperty { property, message, .. } => {
                assert_eq!(property, "new_channel");
                assert!(message.contains("Accepted Values: 100000000,100000001"));
            }
            other => panic!("{other:?}"),
        }

        let sent = json!({"title": "x", "new_region": "Europe"});
        let body = json!({"error":{"code":"0x80048d19","message":"Error identified in Payload provided by the user for Entity :'incidents', For more information on this error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  InnerException : Microsoft.OData.ODataException: Cannot convert the literal 'Europe' to the expected type 'Edm.Int32'. ---> System.FormatException: Input string was not in a correct format.\r\n   at System.Number.ThrowOverflowOrFormatException()"}});
        match error_for("create incident", 400, body.to_string().as_bytes(), Some(&sent)) {
            CrmError::InvalidProperty { property, message, .. } => {
                assert_eq!(property, "new_region");
                assert!(!message.contains("ThrowOverflow"), "stack trace dropped: {message}");
            }
            other => panic!("{other:?}"),
        }

        let body = json!({"error":{"code":"0x80044410","message":"You should specify a parent contact or account."}});
        assert!(matches!(
            error_for("create incident", 400, body.to_string().as_bytes(), None),
            CrmError::InvalidProperty { property, .. } if property == "customerid"
        ));
        let body = json!({"error":{"code":"0x80040217","message":"queue With Id = 1 Does Not Exist"}});
        assert!(matches!(error_for("add to queue", 400, body.to_string().as_bytes(), None), CrmError::NotFound { .. }));
        assert!(matches!(error_for("x", 409, b"", None), CrmError::Rejected { status: 409, .. }));
        assert!(is_duplicate_key("0x80040237") && is_duplicate_key("0X80040237") && !is_duplicate_key("0x0"));
    }
}
