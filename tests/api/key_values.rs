//! Key values are unique in `key_values`, written once when a key is stored: concurrent imports
//! of the same values store each once, and a database from before the table keeps every
//! key's look-up hash and tail through the upgrade.

use std::borrow::Cow;

use keyrelay::crypto::{Row, Vault};
use keyrelay::domain::{JobState, LicenseKey};
use keyrelay::fulfillment::run_batch;
use keyrelay::pool::{
    import_keys,
    keyfile::{KeyRules, parse_keys},
};
use secrecy::ExposeSecret;

use crate::helpers::{ENT, TestApp, base_settings, keyrelay_async};

/// Eight imports at once into two pools, each sharing half its values with the next.
#[tokio::test]
async fn the_same_values_imported_at_once_are_stored_once_and_delivered_once() {
    let app = TestApp::spawn_web().await;
    app.add_pool("pro", ENT, &[]).await;
    app.add_pool("basic", "ent_basic", &[]).await;
    let files: Vec<String> = (0..8)
        .map(|i| {
            (i * 100..i * 100 + 200)
                .map(|n| format!("SAME-{n:05}\n"))
                .collect()
        })
        .collect();
    let vault = app.vault();
    let imports = files.iter().enumerate().map(|(i, file)| {
        let (db, vault) = (app.db.clone(), vault.clone());
        let pool = if i % 2 == 0 { "pro" } else { "basic" };
        async move {
            let parsed = parse_keys(file, KeyRules::default());
            import_keys(&db, &vault, pool, &parsed, false, |_| {})
                .await
                .unwrap()
                .imported
        }
    });
    let imported: u64 = futures_util::future::join_all(imports)
        .await
        .into_iter()
        .sum();
    // Values 0..900: each stored once, whichever import got it first.
    assert_eq!(imported, 900);
    assert_eq!(app.count("SELECT count(*) FROM keys").await, 900);
    assert_eq!(
        app.count("SELECT count(*) FROM keys JOIN key_values ON key_values.key_id = keys.id")
            .await,
        900,
        "every key has its value's row"
    );
    let stored = app.key_values("TRUE").await;
    let distinct: std::collections::HashSet<&String> = stored.iter().collect();
    assert_eq!(distinct.len(), 900);
    for n in [0, 450, 899] {
        let value = format!("SAME-{n:05}");
        let found: (i64, String) =
            sqlx::query_as("SELECT key_id, tail FROM key_values WHERE value_hash = $1")
                .bind(vault.hash(&value))
                .fetch_one(&app.db)
                .await
                .unwrap();
        assert_eq!(found.1, LicenseKey::parse(&value).unwrap().search_tail());
    }

    let grants = app.sell_many(40).await;
    while !run_batch(&app.worker(), 20).await.unwrap().is_empty() {}
    for grant in &grants {
        assert_eq!(app.job_state(grant).await, JobState::Delivered);
    }
    let sent = app.keys_sent_to_dodo();
    let unique: std::collections::HashSet<&String> = sent.iter().collect();
    assert_eq!((sent.len(), unique.len()), (40, 40));
    app.stop().await;
}

/// Rows as the keyrelay before `key_values` wrote them: sealed with hash and tail on `keys`,
/// one sealed before tails were kept, and one in plaintext from before sealing.
#[tokio::test]
async fn an_upgrade_keeps_every_keys_hash_and_tail_and_values_stay_unique() {
    let mut settings = base_settings();
    let name = format!("keyrelay_test_upgrade_{:08x}", rand::random::<u32>());
    settings.database.url =
        keyrelay::db::url::with_database(settings.database.url.expose_secret(), &name).into();
    keyrelay::db::create_database_if_missing(&settings)
        .await
        .unwrap();
    let before = sqlx::migrate::Migrator {
        migrations: Cow::Owned(
            keyrelay::db::MIGRATOR
                .iter()
                .filter(|m| m.version < 20261211000001)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    let old = sqlx::PgPool::connect(settings.database.url.expose_secret())
        .await
        .unwrap();
    before.run(&old).await.unwrap();
    let vault = settings.keys.sealing_vault().unwrap().unwrap();
    let pool_id: i64 = sqlx::query_scalar(
        "INSERT INTO pools (name, entitlement_id) VALUES ('pro', $1) RETURNING id",
    )
    .bind(ENT)
    .fetch_one(&old)
    .await
    .unwrap();
    // Ids as keyrelay takes them, a block of the sequence at a time.
    let first: i64 = sqlx::query_scalar("SELECT nextval(pg_get_serial_sequence('keys', 'id'))")
        .fetch_one(&old)
        .await
        .unwrap();
    let sealed = [
        "OLD-SEALED-AAAA-1111",
        "OLD-SEALED-BBBB-2222",
        "OLD-UNTAILED-3333",
    ];
    for (i, value) in sealed.iter().enumerate() {
        let id = first + i as i64;
        let tail = (i < 2).then(|| LicenseKey::parse(value).unwrap().search_tail());
        sqlx::query(
            "INSERT INTO keys (id, pool_id, value_sealed, value_hash, sealed_with, batch_id, tail) \
             OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, 'imp_old', $6)",
        )
        .bind(id)
        .bind(pool_id)
        .bind(vault.seal(value, Row::Key(id)))
        .bind(vault.hash(value))
        .bind(vault.sealing_key_id())
        .bind(tail)
        .execute(&old)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO keys (id, pool_id, value, batch_id) \
         OVERRIDING SYSTEM VALUE VALUES ($2, $1, 'OLD-PLAIN-4444', 'imp_older')",
    )
    .bind(pool_id)
    .bind(first + 3)
    .execute(&old)
    .await
    .unwrap();
    old.close().await;

    let url = settings.database.url.expose_secret().to_string();
    let keys = settings
        .keys
        .encryption_keys
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_string();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("KEYRELAY_ENCRYPTION_KEY", keys.as_str()),
    ];
    let migrated = keyrelay_async(&env, &["migrate"]).await;
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    let db = keyrelay::db::connect(&settings).await.unwrap();
    let all = sealed.iter().chain(&["OLD-PLAIN-4444"]);
    for (i, value) in all.enumerate() {
        let (key_id, tail): (i64, Option<String>) =
            sqlx::query_as("SELECT key_id, tail FROM key_values WHERE value_hash = $1")
                .bind(vault.hash(value))
                .fetch_one(&db)
                .await
                .unwrap_or_else(|e| panic!("{value}: {e}"));
        assert_eq!(key_id, first + i as i64, "{value}");
        let expected = LicenseKey::parse(value).unwrap().search_tail();
        assert_eq!(tail.as_deref(), Some(expected.as_str()), "{value}");
    }
    // The old values are still taken: an import adds only the new one.
    let parsed = parse_keys(
        "OLD-SEALED-AAAA-1111\nOLD-UNTAILED-3333\nOLD-PLAIN-4444\nNEW-AFTER-5555\n",
        KeyRules::default(),
    );
    let report = import_keys(&db, &vault, "pro", &parsed, false, |_| {})
        .await
        .unwrap();
    assert_eq!((report.imported, report.duplicates), (1, 3));
    let opened: Vec<String> =
        sqlx::query_as::<_, (i64, Vec<u8>)>("SELECT id, value_sealed FROM keys ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, s)| open(&vault, id, &s))
            .collect();
    assert_eq!(
        opened,
        [
            "OLD-SEALED-AAAA-1111",
            "OLD-SEALED-BBBB-2222",
            "OLD-UNTAILED-3333",
            "OLD-PLAIN-4444",
            "NEW-AFTER-5555"
        ]
    );
    db.close().await;
    keyrelay::db::drop_database(&settings).await.unwrap();
}

fn open(vault: &Vault, id: i64, sealed: &[u8]) -> String {
    vault.open(sealed, Row::Key(id)).unwrap()
}
