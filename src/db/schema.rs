//! The database schema, shared by SQLite and PostgreSQL (see migrations/).

diesel::table! {
    channels (id) {
        id -> Text,
        domain -> Text,
        code -> Text,
        kind -> Text,
        wait_for_completion -> Bool,
        ws_role -> Text,
        token -> Text,
        outgoing_url -> Text,
        outgoing_token_primary -> Text,
        outgoing_token_secondary -> Text,
        webhook_scenario -> Text,
        websocket_scenario -> Text,
        comment -> Text,
        enabled -> Bool,
        version -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
        ws_hello -> Bool,
        event_types -> Text,
    }
}

diesel::table! {
    event_logs (domain) {
        domain -> Text,
        epoch -> Text,
        last_id -> BigInt,
    }
}

diesel::table! {
    events (domain, id) {
        domain -> Text,
        id -> BigInt,
        #[sql_name = "type"]
        event_type -> Text,
        occurred_at -> BigInt,
        data -> Text,
        idempotency_key -> Nullable<Text>,
        created_at -> BigInt,
    }
}
