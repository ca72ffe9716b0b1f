//! Loading, layering and validating settings.

use super::*;
use std::time::Duration;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_load_without_any_environment() {
    let s = Settings::load_from(None, &env(&[])).unwrap();
    assert_eq!(s.worker.concurrency, 16);
    assert_eq!(s.dodo.rate_limits(), Some(crate::dodo::RateLimits::TIER0));
    assert_eq!(s.http.bind, "127.0.0.1:8080");
    assert_eq!(s.dodo_base_url(), "https://test.dodopayments.com");
}

#[test]
fn conventional_names_win_over_prefixed_ones() {
    let s = Settings::load_from(
        None,
        &env(&[
            ("KEYRELAY_DATABASE__URL", "postgres://a@h/one"),
            ("DATABASE_URL", "postgres://a@h/two"),
            ("KEYRELAY_WORKER__CONCURRENCY", "3"),
            ("DODO_PAYMENTS_ENVIRONMENT", "live_mode"),
        ]),
    )
    .unwrap();
    assert_eq!(s.database.url.expose_secret(), "postgres://a@h/two");
    assert_eq!(s.worker.concurrency, 3);
    assert_eq!(s.dodo_base_url(), "https://live.dodopayments.com");
}

#[test]
fn a_misspelled_key_is_named_in_the_error() {
    let err = Settings::load_from(None, &env(&[("KEYRELAY_WORKER__CONCURENCY", "3")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("concurency"), "{err}");
    let err = Settings::load_from(None, &env(&[("KEYRELAY_WORKER_CONCURRENCY", "3")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("KEYRELAY_WORKER_CONCURRENCY"), "{err}");
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        ("DODO_PAYMENTS_ENVIRONMENT", "staging", "environment"),
        ("DODO_PAYMENTS_WEBHOOK_KEY", "whsec_%%%", "webhook.secret"),
        ("DODO_PAYMENTS_BASE_URL", "not a url", "dodo.base_url"),
        ("DATABASE_URL", "nope", "database.url"),
    ];
    for (name, value, expected) in cases {
        let err = Settings::load_from(None, &env(&[(name, value)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{name}={value}: {err}");
    }
}

#[test]
fn blank_conventional_values_count_as_unset() {
    let s = Settings::load_from(
        None,
        &env(&[
            ("DODO_PAYMENTS_WEBHOOK_KEY", "  "),
            ("DODO_PAYMENTS_API_KEY", ""),
        ]),
    )
    .unwrap();
    assert!(s.webhook.secret.is_none() && s.dodo.api_key.is_none());
    let err = Settings::load_from(None, &env(&[("KEYRELAY_WEBHOOK__SECRET", " ")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("webhook.secret"), "{err}");
}

#[test]
fn rotated_secrets_are_all_parsed() {
    let keys = parse_webhook_secrets("whsec_c2VjcmV0MQ== whsec_c2VjcmV0Mg==").unwrap();
    assert_eq!(keys, vec![b"secret1".to_vec(), b"secret2".to_vec()]);
}

#[test]
fn secrets_do_not_appear_in_debug_output() {
    let s = Settings::load_from(
        None,
        &env(&[
            ("DODO_PAYMENTS_API_KEY", "sk_live_very_secret"),
            ("DODO_PAYMENTS_WEBHOOK_KEY", "whsec_c2VjcmV0MQ=="),
            ("DATABASE_URL", "postgres://u:hunter2@h/db"),
        ]),
    )
    .unwrap();
    let debug = format!("{s:?}");
    for secret in ["sk_live_very_secret", "c2VjcmV0MQ", "hunter2"] {
        assert!(!debug.contains(secret), "{secret} leaked: {debug}");
    }
    assert_eq!(s.database_url_redacted(), "postgres://u:****@h/db");
}

#[test]
fn a_short_admin_token_is_refused_with_how_to_make_one() {
    for short in ["hunter2", &"x".repeat(MIN_ADMIN_TOKEN_LEN - 1)] {
        let err = Settings::load_from(None, &env(&[("KEYRELAY_ADMIN_TOKEN", short)]))
            .map(|s| s.admin.token.is_some())
            .unwrap_err()
            .to_string();
        assert!(err.contains("openssl rand"), "{err}");
        assert!(!err.contains(short), "the token was echoed: {err}");
    }
    let token = "t".repeat(MIN_ADMIN_TOKEN_LEN);
    let ok = Settings::load_from(None, &env(&[("KEYRELAY_ADMIN_TOKEN", &token)])).unwrap();
    assert!(ok.admin.token.is_some());
}

#[test]
fn rate_limits_come_from_a_tier_or_explicit_numbers() {
    let load = |pairs: &[(&str, &str)]| Settings::load_from(None, &env(pairs));
    let tier = |name| {
        load(&[("KEYRELAY_DODO__RATE_LIMIT", name)])
            .unwrap()
            .dodo
            .rate_limits()
    };
    assert_eq!(
        tier("tier1"),
        Some(crate::dodo::RateLimits::new(100, 1_000))
    );
    assert_eq!(
        tier("tier2"),
        Some(crate::dodo::RateLimits::new(500, 5_000))
    );
    assert_eq!(tier("off"), None);
    let custom = load(&[
        ("KEYRELAY_DODO__RATE_LIMIT", "custom"),
        ("KEYRELAY_DODO__BURST_PER_SEC", "20"),
        ("KEYRELAY_DODO__REQUESTS_PER_MIN", "80"),
    ])
    .unwrap();
    assert_eq!(
        custom.dodo.rate_limits(),
        Some(crate::dodo::RateLimits::new(20, 80))
    );
}

#[test]
fn rate_limit_mistakes_are_explained() {
    let error = |pairs: &[(&str, &str)]| {
        Settings::load_from(None, &env(pairs))
            .unwrap_err()
            .to_string()
    };
    assert!(error(&[("KEYRELAY_DODO__RATE_LIMIT", "tier3")]).contains("tier0"));
    assert!(
        error(&[("KEYRELAY_DODO__RATE_LIMIT", "custom")])
            .contains("needs both dodo.burst_per_sec and dodo.requests_per_min")
    );
    assert!(
        error(&[("KEYRELAY_DODO__BURST_PER_SEC", "10")])
            .contains("apply only with dodo.rate_limit = \"custom\"")
    );
    let custom = |burst, per_min| {
        error(&[
            ("KEYRELAY_DODO__RATE_LIMIT", "custom"),
            ("KEYRELAY_DODO__BURST_PER_SEC", burst),
            ("KEYRELAY_DODO__REQUESTS_PER_MIN", per_min),
        ])
    };
    assert!(custom("0", "10").contains("dodo.burst_per_sec must be between 1 and"));
    assert!(custom("10", "1000000").contains("dodo.requests_per_min must be between 1 and"));
    assert!(custom("50", "40").contains("cannot be more than dodo.requests_per_min"));
    assert!(
        error(&[("KEYRELAY_DODO__MAX_REQUESTS_PER_SEC", "25")])
            .contains("replaced by dodo.rate_limit")
    );
}

#[test]
fn key_sources_come_from_the_environment_by_name() {
    let s = Settings::load_from(
        None,
        &env(&[
            (
                "KEYRELAY_KEY_SOURCES__VENDOR__URL",
                "https://licenses.example.com/k",
            ),
            ("KEYRELAY_KEY_SOURCES__VENDOR__SECRET", "whsec_c2VjcmV0MQ=="),
        ]),
    )
    .unwrap();
    let vendor = &s.key_sources["vendor"];
    assert_eq!(vendor.url, "https://licenses.example.com/k");
    assert_eq!(
        (vendor.key_pointer.as_str(), vendor.timeout_secs),
        ("/key", 10)
    );
    let error = Settings::load_from(
        None,
        &env(&[
            ("KEYRELAY_KEY_SOURCES__VENDOR__URL", "ftp://user:pw@host/k"),
            ("KEYRELAY_KEY_SOURCES__VENDOR__SECRET", "whsec_c2VjcmV0MQ=="),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("key_sources.vendor.url") && !error.contains("pw@"),
        "{error}"
    );
    let error = Settings::load_from(
        None,
        &env(&[
            (
                "KEYRELAY_KEY_SOURCES__VENDOR__URL",
                "https://licenses.example.com/k",
            ),
            ("KEYRELAY_KEY_SOURCES__VENDOR__SECRET", "not base64!"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("key_sources.vendor.secret is not whsec_")
            && !error.contains("webhook.secret"),
        "{error}"
    );
}

#[test]
fn the_shop_api_token_is_long_and_not_the_admin_token() {
    let token = "s".repeat(MIN_ADMIN_TOKEN_LEN);
    let s = Settings::load_from(None, &env(&[("KEYRELAY_API_TOKEN", &token)])).unwrap();
    assert_eq!(s.api.token.unwrap().expose_secret(), token);
    let err = Settings::load_from(None, &env(&[("KEYRELAY_API_TOKEN", "short")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("api.token (KEYRELAY_API_TOKEN) is shorter"),
        "{err}"
    );
    let err = Settings::load_from(
        None,
        &env(&[
            ("KEYRELAY_API_TOKEN", &token),
            ("KEYRELAY_ADMIN_TOKEN", &token),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("is the same as admin.token"), "{err}");
    assert!(!err.contains(&token), "the token is not shown: {err}");
}

#[test]
fn trusted_proxies_come_as_words_from_the_environment_and_bad_ones_are_named() {
    let s = Settings::load_from(
        None,
        &env(&[(
            "KEYRELAY_HTTP__TRUSTED_PROXIES",
            "10.0.0.0/8, 127.0.0.1 ::1",
        )]),
    )
    .unwrap();
    assert_eq!(s.http.trusted_proxies, ["10.0.0.0/8", "127.0.0.1", "::1"]);
    assert!(s.http.trusted_proxies().is_ok());
    assert!(
        Settings::load_from(None, &env(&[]))
            .unwrap()
            .http
            .trusted_proxies
            .is_empty()
    );
    let err = Settings::load_from(
        None,
        &env(&[("KEYRELAY_HTTP__TRUSTED_PROXIES", "10.0.0.0/8 the-proxy")]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("http.trusted_proxies: `the-proxy`"),
        "{err}"
    );
}

#[test]
fn metrics_bind_must_differ_from_the_webhook_address() {
    let err = Settings::load_from(
        None,
        &env(&[("KEYRELAY_HTTP__METRICS_BIND", "127.0.0.1:8080")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("http.metrics_bind"), "{err}");
    let s = Settings::load_from(None, &env(&[("KEYRELAY_HTTP__METRICS_BIND", " ")])).unwrap();
    assert_eq!(s.http.metrics_bind, None, "blank is unset");
}

#[test]
fn a_direct_url_makes_the_database_url_a_transaction_pooler() {
    let plain = Settings::load_from(None, &env(&[])).unwrap();
    assert!(!plain.database.pooled());
    let paired = Settings::load_from(
        None,
        &env(&[
            ("DATABASE_URL", "postgres://u:p@pooler.example:6543/shop"),
            ("DATABASE_DIRECT_URL", "postgres://u:p@db.example:5432/shop"),
        ]),
    )
    .unwrap();
    assert!(paired.database.pooled());
    let pooler_only =
        Settings::load_from(None, &env(&[("KEYRELAY_DATABASE__POOLER", "transaction")])).unwrap();
    assert!(pooler_only.database.pooled() && pooler_only.database.direct_url.is_none());
    let blank = Settings::load_from(None, &env(&[("DATABASE_DIRECT_URL", " ")])).unwrap();
    assert!(!blank.database.pooled());
    for (name, value, expected) in [
        ("KEYRELAY_DATABASE__POOLER", "transactoin", "pooler"),
        (
            "DATABASE_DIRECT_URL",
            "postgres://u@h:6x/db",
            "database.direct_url",
        ),
        (
            "DATABASE_URL",
            "postgres://u@h1,,h3/db",
            "host 2 of database.url",
        ),
    ] {
        let err = Settings::load_from(None, &env(&[(name, value)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{name}={value}: {err}");
    }
}

#[test]
fn default_settings_ride_out_six_hours_of_outage() {
    let settings = Settings::load_from(None, &Default::default()).unwrap();
    let p = crate::backoff::RetryPolicy {
        base: Duration::from_millis(settings.worker.backoff_base_ms),
        max: Duration::from_millis(settings.worker.backoff_max_ms),
    };
    let span = p.minimum_span(settings.worker.max_attempts);
    assert!(span >= Duration::from_secs(6 * 3600), "only {span:?}");
}
