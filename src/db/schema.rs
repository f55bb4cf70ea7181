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
    }
}
