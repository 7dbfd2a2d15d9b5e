//! Graph's change-notification webhook protocol: the validation handshake and the notification
//! payload, turned into `ChatNotification`s. Shared by the local API route and the teams-webhook
//! Lambda, so both answer exactly alike.

use serde::Deserialize;

use crate::domain::teams::{ChangeKind, ChatNotification, GraphMessageId, SubscriptionId, secret_hash};

/// Graph's validation request: `POST {url}?validationToken=<opaque>`. The answer is `200`,
/// `Content-Type: text/plain`, and the token as decoded from the query (never re-encoded), within
/// 10 seconds. `query_token` is the already URL-decoded value.
pub fn validation_response(query_token: Option<&str>) -> Option<String> {
    query_token.map(str::to_owned)
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("the notification body is not JSON with a value array")]
    NotANotification(#[source] serde_json::Error),
}

#[derive(Deserialize)]
struct Payload {
    value: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Item {
    subscription_id: String,
    #[serde(default)]
    change_type: Option<String>,
    #[serde(default)]
    lifecycle_event: Option<String>,
    #[serde(default)]
    client_state: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    resource_data: Option<ResourceData>,
}

#[derive(Deserialize)]
struct ResourceData {
    #[serde(default)]
    id: Option<String>,
}

/// The message id of `chats('19:...')/messages('1616991463150')`.
fn message_of(resource: &str) -> Option<&str> {
    let start = resource.rfind("messages('")? + "messages('".len();
    let end = resource[start..].find('\'')? + start;
    Some(&resource[start..end])
}

/// The notifications of a webhook POST. Items that are not about chat messages, or are
/// malformed, are skipped (and counted in the second value): one bad item must not lose the
/// others.
pub fn parse_notifications(body: &[u8]) -> Result<(Vec<ChatNotification>, usize), PayloadError> {
    let payload: Payload = serde_json::from_slice(body).map_err(PayloadError::NotANotification)?;
    let mut out = Vec::with_capacity(payload.value.len());
    let mut skipped = 0;
    for raw in payload.value {
        let Ok(item) = serde_json::from_value::<Item>(raw) else {
            skipped += 1;
            continue;
        };
        let kind = match (item.lifecycle_event.as_deref(), item.change_type.as_deref()) {
            (Some("reauthorizationRequired"), _) => ChangeKind::ReauthorizationRequired,
            (Some("subscriptionRemoved"), _) => ChangeKind::SubscriptionRemoved,
            (Some("missed"), _) => ChangeKind::Missed,
            (None, Some("created")) => ChangeKind::Created,
            (None, Some("updated")) => ChangeKind::Updated,
            (None, Some("deleted")) => ChangeKind::Deleted,
            _ => {
                skipped += 1;
                continue;
            }
        };
        let Ok(subscription) = SubscriptionId::parse(&item.subscription_id) else {
            skipped += 1;
            continue;
        };
        let message = item
            .resource_data
            .and_then(|d| d.id)
            .or_else(|| item.resource.as_deref().and_then(message_of).map(str::to_owned))
            .and_then(|id| GraphMessageId::parse(&id).ok());
        if !kind.is_lifecycle() && message.is_none() {
            skipped += 1;
            continue;
        }
        out.push(ChatNotification {
            subscription,
            kind,
            message,
            // Only the hash travels on: it is compared with the stored hash.
            client_state_hash: item.client_state.as_deref().map(secret_hash),
        });
    }
    Ok((out, skipped))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn notifications_and_lifecycle_events_are_read() {
        let body = json!({ "value": [
            { "subscriptionId": "9070a4bb-5899-4b4a-b976-ce23f48bdf3a", "changeType": "created", "clientState": "cs",
              "tenantId": "t", "resource": "chats('19:a_b@unq.gbl.spaces')/messages('1616991463150')",
              "resourceData": { "id": "1616991463150", "@odata.type": "#Microsoft.Graph.chatMessage" } },
            { "subscriptionId": "9070a4bb-5899-4b4a-b976-ce23f48bdf3a", "changeType": "deleted", "clientState": "cs",
              "resource": "chats('19:a_b@unq.gbl.spaces')/messages('1616991463151')" },
            { "subscriptionId": "9070a4bb-5899-4b4a-b976-ce23f48bdf3a", "lifecycleEvent": "subscriptionRemoved",
              "clientState": "cs" },
            { "subscriptionId": "x", "changeType": "created" },
            { "subscriptionId": "9070a4bb-5899-4b4a-b976-ce23f48bdf3a", "changeType": "weird" },
            "not an object"
        ]});
        let (items, skipped) = parse_notifications(body.to_string().as_bytes()).unwrap();
        assert_eq!(skipped, 3);
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].kind, ChangeKind::Created);
        assert_eq!(items[0].message.as_ref().unwrap().as_str(), "1616991463150");
        assert_eq!(items[1].message.as_ref().unwrap().as_str(), "1616991463151");
        assert_eq!(items[2].kind, ChangeKind::SubscriptionRemoved);
        assert_eq!(items[0].client_state_hash.as_deref(), Some(secret_hash("cs").as_str()));
        assert!(parse_notifications(b"{}").is_err());
        assert!(parse_notifications(b"nope").is_err());
    }

    #[test]
    fn the_validation_token_is_answered_as_decoded() {
        let token = "Validation: Testing client application reachability for subscription Request-Id: 1";
        assert_eq!(validation_response(Some(token)).as_deref(), Some(token));
        assert_eq!(validation_response(None), None);
    }
}
