//! The OpenAPI 3.1 document served at `/v1/openapi.json`.

use serde_json::{Value, json};

// Building blocks for the core document and the modules' paths, so every part describes its
// parameters, bodies and errors the same way.

pub(crate) fn id_param() -> Value {
    json!({ "name": "interaction_id", "in": "path", "required": true,
            "schema": { "type": "string", "pattern": "^[0-9A-Za-z]{12}$" },
            "description": "The interaction, as in the [MR-...] token of its subject." })
}

/// A 200 with `schema`, and the error answers every route can give.
pub(crate) fn ok(schema: &str, description: &str) -> Value {
    json!({ "200": { "description": description,
                     "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } },
            "400": { "$ref": "#/components/responses/BadRequest" },
            "401": { "$ref": "#/components/responses/Unauthorized" },
            "403": { "$ref": "#/components/responses/Forbidden" },
            "404": { "$ref": "#/components/responses/NotFound" },
            "409": { "$ref": "#/components/responses/Conflict" } })
}

/// A required JSON request body of `schema`.
pub(crate) fn json_body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

pub(crate) fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" }, "description": description })
}

pub(crate) fn query_param(name: &str, schema: Value, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": schema, "description": description })
}

/// The document with every module's paths and schemas merged in.
pub fn document_with(modules: &[super::ApiModule]) -> Value {
    let mut doc = document();
    for m in modules {
        if let (Some(paths), Some(extra)) = (doc["paths"].as_object_mut(), m.openapi_paths.as_object()) {
            paths.extend(extra.clone());
        }
        if let (Some(schemas), Some(extra)) =
            (doc["components"]["schemas"].as_object_mut(), m.openapi_schemas.as_object())
        {
            schemas.extend(extra.clone());
        }
    }
    doc
}

/// Checks that a document describes exactly `routes`: returns what is missing or extra.
pub fn check_routes(doc: &Value, routes: &[(&str, &str)]) -> Vec<String> {
    let mut problems = Vec::new();
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    for (method, path) in routes {
        if paths.get(*path).and_then(|p| p.get(*method)).is_none() {
            problems.push(format!("{method} {path} is not in the OpenAPI document"));
        }
    }
    for (path, item) in &paths {
        for method in item.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            if !routes.iter().any(|(m, p)| *m == method && *p == path) {
                problems.push(format!("{method} {path} is documented but not routed"));
            }
        }
    }
    problems
}

/// The core document (agents, offers, interactions, supervisors).
pub fn document() -> Value {
    let error = json!({ "description": "An error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Mailroom agent API",
            "version": "1",
            "description": "Agents work email offers and interactions; supervisors watch queues and agents. Every request but /v1/health and /v1/openapi.json needs a JWT bearer token whose `sub` is the agent id and whose `role` claim is agent, supervisor, admin or ai_assistant. Agents act only on their own offers and interactions (403 otherwise). A 400 names the request field at fault in `error.field`."
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/v1/health": { "get": { "summary": "Liveness", "security": [], "responses": { "200": { "description": "Up" } } } },
            "/v1/openapi.json": { "get": { "summary": "This document", "security": [], "responses": { "200": { "description": "OpenAPI 3.1" } } } },
            "/v1/me": { "get": { "summary": "The caller's agent profile", "responses": ok("Me", "The caller") } },
            "/v1/me/presence": {
                "get": { "summary": "The caller's presence", "responses": ok("Presence", "Presence") },
                "put": { "summary": "Set presence: available, busy or working_offline",
                         "description": "Refused with 409 while an offer is pending. Becoming available starts offers.",
                         "requestBody": json_body("SetPresence"), "responses": ok("Presence", "The new presence") }
            },
            "/v1/me/offers": { "get": { "summary": "Pending offers, with what the notification shows", "responses": ok("Offers", "Offers") } },
            "/v1/me/offers/{interaction_id}/accept": { "post": { "summary": "Accept an offer: the interaction is yours and you become busy at capacity",
                "parameters": [id_param()], "responses": ok("Interaction", "The interaction, now assigned") } },
            "/v1/me/offers/{interaction_id}/reject": { "post": { "summary": "Reject an offer (where the queue allows it): you become working_offline and it goes to another agent",
                "parameters": [id_param()], "responses": ok("Interaction", "The interaction, waiting again") } },
            "/v1/me/interactions": { "get": { "summary": "The caller's assigned interactions", "responses": ok("Interactions", "Interactions") } },
            "/v1/interactions/{interaction_id}": { "get": { "summary": "An interaction with its transcript (its agent, or a supervisor)",
                "parameters": [id_param()], "responses": ok("InteractionDetail", "The interaction") } },
            "/v1/interactions/{interaction_id}/end": { "post": { "summary": "End (wrap up) an interaction; you are free for the next one",
                "parameters": [id_param()], "responses": ok("Interaction", "The ended interaction") } },
            "/v1/interactions/{interaction_id}/transfer": { "post": { "summary": "Transfer to exactly one other queue; you are freed",
                "parameters": [id_param()], "requestBody": json_body("Transfer"), "responses": ok("Interaction", "The interaction, waiting in its new queue") } },
            "/v1/queues": { "get": { "summary": "Queues with waiting counts and oldest wait (supervisor, admin)", "responses": ok("Queues", "Queues") } },
            "/v1/agents": { "get": { "summary": "Agents with presence (supervisor, admin)", "responses": ok("Agents", "Agents") } }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
            "responses": { "BadRequest": error.clone(), "Unauthorized": error.clone(), "Forbidden": error.clone(), "NotFound": error.clone(), "Conflict": error },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "required": ["code", "message"],
                    "properties": { "code": { "type": "string" }, "message": { "type": "string" }, "field": { "type": "string", "description": "The request field at fault (400)" } } } } },
                "Me": { "type": "object", "properties": { "agent_id": { "type": "string" }, "name": { "type": "string" }, "email": { "type": "string" },
                    "role": { "type": "string" }, "queues": { "type": "array", "items": { "type": "string" } }, "capacity": { "type": "integer" } } },
                "SetPresence": { "type": "object", "required": ["presence"], "additionalProperties": false,
                    "properties": { "presence": { "type": "string", "enum": ["available", "busy", "working_offline"] } } },
                "Presence": { "type": "object", "properties": { "agent_id": { "type": "string" },
                    "presence": { "type": "string", "enum": ["available", "busy", "working_offline", "reserved"] },
                    "active": { "type": "integer" }, "capacity": { "type": "integer" }, "since": { "type": "string", "format": "date-time" },
                    "pending_offer": { "type": ["string", "null"] } } },
                "Offer": { "type": "object", "properties": { "interaction_id": { "type": "string" }, "offer_id": { "type": "string" },
                    "customer_name": { "type": ["string", "null"] }, "customer_email": { "type": "string" }, "subject": { "type": "string" },
                    "queue": { "type": "string" }, "priority": { "type": "integer" }, "waiting_seconds": { "type": "integer" },
                    "expires_at": { "type": ["string", "null"], "format": "date-time" } } },
                "Offers": { "type": "object", "properties": { "offers": { "type": "array", "items": { "$ref": "#/components/schemas/Offer" } } } },
                "Interaction": { "type": "object", "properties": { "interaction_id": { "type": "string" },
                    "state": { "type": "string", "enum": ["queued", "offered", "assigned", "ended"] }, "channel": { "type": "string" },
                    "customer_name": { "type": ["string", "null"] }, "customer_email": { "type": "string" }, "subject": { "type": "string" },
                    "queue": { "type": "string" }, "priority": { "type": "integer" }, "category": { "type": "string" }, "sentiment": { "type": "string" },
                    "agent": { "type": ["string", "null"] }, "message_count": { "type": "integer" }, "created_at": { "type": "string", "format": "date-time" },
                    "queued_at": { "type": ["string", "null"], "format": "date-time" }, "transfers": { "type": "integer" } } },
                "Interactions": { "type": "object", "properties": { "interactions": { "type": "array", "items": { "$ref": "#/components/schemas/Interaction" } } } },
                "InteractionDetail": { "type": "object", "properties": { "interaction": { "$ref": "#/components/schemas/Interaction" },
                    "messages": { "type": "array", "items": { "type": "object" } } } },
                "Transfer": { "type": "object", "required": ["queue"], "additionalProperties": false, "properties": { "queue": { "type": "string" } } },
                "Queues": { "type": "object", "properties": { "queues": { "type": "array", "items": { "type": "object", "properties": {
                    "queue": { "type": "string" }, "waiting": { "type": "integer" }, "oldest_wait_seconds": { "type": ["integer", "null"] },
                    "available_agents": { "type": "integer" }, "allow_reject": { "type": "boolean" }, "offer_timeout_secs": { "type": "integer" } } } } } },
                "Agents": { "type": "object", "properties": { "agents": { "type": "array", "items": { "type": "object", "properties": {
                    "agent_id": { "type": "string" }, "name": { "type": "string" }, "role": { "type": "string" }, "queues": { "type": "array", "items": { "type": "string" } },
                    "presence": { "type": "string" }, "active": { "type": "integer" }, "capacity": { "type": "integer" }, "since": { "type": "string" } } } } } }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        for (method, path) in super::super::ROUTES {
            assert!(
                paths.get(*path).and_then(|p| p.get(*method)).is_some(),
                "{method} {path} is not in the OpenAPI document"
            );
        }
        let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(documented, super::super::ROUTES.len(), "the document lists routes the router does not have");
    }
}
