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
        guards -> Text,
        history -> Text,
    }
}

diesel::table! {
    executions (id) {
        id -> Text,
        domain -> Text,
        channel_id -> Text,
        started_at -> BigInt,
        trigger_kind -> Text,
        outcome -> Text,
        version -> BigInt,
        duration_us -> BigInt,
        wait_us -> BigInt,
        detail -> Text,
    }
}

diesel::table! {
    channel_versions (channel_id, version) {
        channel_id -> Text,
        version -> BigInt,
        domain -> Text,
        webhook_scenario -> Text,
        websocket_scenario -> Text,
        note -> Text,
        saved_at -> BigInt,
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

diesel::table! {
    subscriptions (id) {
        id -> Text,
        domain -> Text,
        channel_id -> Text,
        url -> Text,
        event_types -> Text,
        description -> Text,
        secret -> Text,
        previous_secret -> Text,
        previous_secret_until -> BigInt,
        enabled -> Bool,
        disabled_reason -> Text,
        failing_since -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
        after_event_id -> BigInt,
    }
}

diesel::table! {
    outbox_cursors (domain) {
        domain -> Text,
        last_id -> BigInt,
    }
}

diesel::table! {
    deliveries (id) {
        id -> Text,
        domain -> Text,
        subscription_id -> Text,
        event_id -> BigInt,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        lease_until -> BigInt,
        last_status -> Integer,
        last_error -> Text,
        created_at -> BigInt,
        delivered_at -> BigInt,
    }
}

diesel::table! {
    delivery_attempts (delivery_id, attempt) {
        delivery_id -> Text,
        attempt -> Integer,
        at -> BigInt,
        status -> Integer,
        latency_ms -> BigInt,
        response -> Text,
        error -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(channels, subscriptions);

diesel::table! {
    nodes (domain, node_id) {
        domain -> Text,
        node_id -> Text,
        roles -> Text,
        listen -> Text,
        version -> Text,
        started_at -> BigInt,
        heartbeat_at -> BigInt,
    }
}

diesel::table! {
    ws_directory (code) {
        code -> Text,
        domain -> Text,
        channel_id -> Text,
        node_id -> Text,
        peer_ip -> Text,
        connected_at -> BigInt,
    }
}

diesel::table! {
    ws_pushes (id) {
        id -> Text,
        domain -> Text,
        payload -> Text,
        created_at -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(ws_directory, nodes);

diesel::table! {
    channel_state (channel_id, state_key) {
        channel_id -> Text,
        state_key -> Text,
        value -> Text,
        expires_at -> BigInt,
        updated_at -> BigInt,
    }
}
