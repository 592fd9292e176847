//! The local KMS: key store opening, lifecycle, envelope operations, audit log.

use std::os::unix::fs::PermissionsExt;

use pgseal_crypto::keystore::DEFAULT_KEY_ALIAS;
use pgseal_crypto::{
    DataKeySpec, EncryptionContext, ErrorKind, KeyState, Kms, LocalKms, Passphrase,
};

fn pass() -> Passphrase {
    Passphrase::new("correct horse battery staple")
}

fn store() -> (tempfile::TempDir, LocalKms) {
    let dir = tempfile::tempdir().unwrap();
    let kms = LocalKms::open(&dir.path().join("kms"), &pass()).unwrap();
    (dir, kms)
}

fn ctx(name: &str) -> EncryptionContext {
    EncryptionContext::new().with("pgseal:instance", name)
}

#[test]
fn store_files_are_private_and_reopen_with_the_same_passphrase_only() {
    let (dir, kms) = store();
    let key = kms.create_key(Some("orders"), "for orders").unwrap();
    let kms_dir = dir.path().join("kms");
    for name in ["keystore.json", "audit.log"] {
        let mode = std::fs::metadata(kms_dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    assert_eq!(
        std::fs::metadata(&kms_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    drop(kms);

    let again = LocalKms::open(&kms_dir, &pass()).unwrap();
    assert_eq!(again.describe_key("orders").unwrap().key_id, key.key_id);

    let err = LocalKms::open(&kms_dir, &Passphrase::new("wrong passphrase!")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongPassphrase);
    assert!(
        err.to_string().contains("cannot open key store")
            && err.to_string().contains("wrong passphrase"),
        "{err}"
    );
}

#[test]
fn a_new_store_refuses_a_short_passphrase_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let err = LocalKms::open(&dir.path().join("kms"), &Passphrase::new("short")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!dir.path().join("kms").exists(), "nothing may be written");
}

#[test]
fn damaged_or_edited_store_is_reported_as_damaged() {
    let (dir, kms) = store();
    let key = kms.create_key(None, "").unwrap();
    kms.disable_key(&key.key_id.0).unwrap();
    let path = dir.path().join("kms/keystore.json");
    let original = std::fs::read_to_string(&path).unwrap();

    // Re-enabling a disabled key by editing the file is caught by the integrity check.
    std::fs::write(&path, original.replace("\"disabled\"", "\"enabled\"")).unwrap();
    let err = LocalKms::open(&dir.path().join("kms"), &pass()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyStoreDamaged, "{err}");
    assert!(err.to_string().contains("changed outside pgseal"), "{err}");

    std::fs::write(&path, "{ not json").unwrap();
    let err = LocalKms::open(&dir.path().join("kms"), &pass()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyStoreDamaged);
    assert!(err.to_string().contains("damaged"), "{err}");
}

#[test]
fn data_keys_unwrap_only_with_the_same_context() {
    let (_dir, kms) = store();
    kms.create_key(Some("vol"), "").unwrap();
    for spec in [DataKeySpec::Aes256Gcm, DataKeySpec::Aes256Xts] {
        let generated = kms.generate_data_key("alias/vol", spec, &ctx("a")).unwrap();
        assert_eq!(generated.plaintext.len(), spec.key_len());
        let back = kms.decrypt(&generated.wrapped, &ctx("a")).unwrap();
        assert_eq!(back.expose(), generated.plaintext.expose());
        let err = kms.decrypt(&generated.wrapped, &ctx("b")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tampered, "{err}");
        let err = kms
            .decrypt(&generated.wrapped, &EncryptionContext::new())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tampered);
    }
}

#[test]
fn unknown_keys_and_aliases_are_not_found() {
    let (_dir, kms) = store();
    for key in ["nope", "alias/nope", "00000000-0000-4000-8000-000000000000"] {
        let err = kms
            .generate_data_key(key, DataKeySpec::Aes256Gcm, &ctx("a"))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyNotFound, "{key}");
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn the_managed_default_key_is_made_on_first_use_and_cannot_be_disabled() {
    let (_dir, kms) = store();
    assert!(kms.list_keys().unwrap().is_empty(), "listing makes no key");
    let first = kms.resolve(DEFAULT_KEY_ALIAS).unwrap();
    let second = kms.resolve(DEFAULT_KEY_ALIAS).unwrap();
    assert_eq!(first, second);
    let meta = kms.describe_key(DEFAULT_KEY_ALIAS).unwrap();
    assert!(meta.managed);
    assert_eq!(meta.aliases, [DEFAULT_KEY_ALIAS]);
    assert_eq!(
        kms.disable_key(DEFAULT_KEY_ALIAS).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kms.schedule_key_deletion(DEFAULT_KEY_ALIAS, 7)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    // Users cannot take the reserved namespace.
    assert_eq!(
        kms.create_key(Some("pgseal/mine"), "").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn aliases_are_unique_and_validated() {
    let (_dir, kms) = store();
    kms.create_key(Some("app"), "").unwrap();
    assert_eq!(
        kms.create_key(Some("app"), "").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kms.create_key(Some("has space"), "").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        kms.list_keys().unwrap().len(),
        1,
        "failed creates make no key"
    );
}

#[test]
fn a_disabled_key_refuses_everything_until_enabled() {
    let (_dir, kms) = store();
    let key = kms.create_key(Some("k"), "").unwrap().key_id.0;
    let wrapped = kms
        .generate_data_key("k", DataKeySpec::Aes256Gcm, &ctx("a"))
        .unwrap()
        .wrapped;
    let meta = kms.disable_key("k").unwrap();
    assert_eq!(meta.state, KeyState::Disabled);
    let err = kms
        .generate_data_key("k", DataKeySpec::Aes256Gcm, &ctx("a"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyUnusable);
    assert!(
        err.to_string().contains("disabled") && err.to_string().contains("pgseal key enable"),
        "{err}"
    );
    assert_eq!(
        kms.decrypt(&wrapped, &ctx("a")).unwrap_err().kind(),
        ErrorKind::KeyUnusable
    );
    assert_eq!(
        kms.rotate_key(&key).unwrap_err().kind(),
        ErrorKind::KeyUnusable
    );
    kms.enable_key(&key).unwrap();
    kms.decrypt(&wrapped, &ctx("a")).unwrap();
}

#[test]
fn rotation_keeps_old_wraps_working_and_uses_the_newest_material() {
    let (_dir, kms) = store();
    kms.create_key(Some("r"), "").unwrap();
    let before = kms
        .generate_data_key("r", DataKeySpec::Aes256Gcm, &ctx("a"))
        .unwrap();
    let meta = kms.rotate_key("r").unwrap();
    assert_eq!(meta.material_versions, 2);
    assert!(meta.last_rotated.is_some());
    let after = kms
        .generate_data_key("r", DataKeySpec::Aes256Gcm, &ctx("a"))
        .unwrap();
    assert_eq!(
        kms.decrypt(&before.wrapped, &ctx("a")).unwrap().expose(),
        before.plaintext.expose()
    );
    assert_eq!(
        kms.decrypt(&after.wrapped, &ctx("a")).unwrap().expose(),
        after.plaintext.expose()
    );
    // The version is in the wrapped blob: byte 6 + id length holds the big-endian u32.
    let id_len = after.wrapped.as_bytes()[5] as usize;
    let version = |w: &pgseal_crypto::WrappedKey| {
        u32::from_be_bytes(w.as_bytes()[6 + id_len..10 + id_len].try_into().unwrap())
    };
    assert_eq!((version(&before.wrapped), version(&after.wrapped)), (1, 2));
}

#[test]
fn deletion_is_refused_while_pending_cancellable_and_final_after_the_date() {
    let (_dir, kms) = store();
    let key = kms.create_key(Some("gone"), "").unwrap().key_id.0;
    assert_eq!(
        kms.schedule_key_deletion(&key, 3).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let meta = kms.schedule_key_deletion(&key, 7).unwrap();
    assert!(matches!(meta.state, KeyState::PendingDeletion { .. }));
    let err = kms
        .generate_data_key(&key, DataKeySpec::Aes256Gcm, &ctx("a"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyUnusable);
    assert!(err.to_string().contains("pending deletion"), "{err}");
    assert_eq!(
        kms.enable_key(&key).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );

    // Cancelling leaves it disabled, as a cloud KMS does.
    assert_eq!(
        kms.cancel_key_deletion(&key).unwrap().state,
        KeyState::Disabled
    );
    kms.enable_key(&key).unwrap();

    kms.schedule_key_deletion(&key, 7).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        kms.purge_due_deletions_at(now + 6 * 86_400)
            .unwrap()
            .is_empty(),
        "not yet due"
    );
    let purged = kms.purge_due_deletions_at(now + 7 * 86_400 + 1).unwrap();
    assert_eq!(purged.len(), 1);
    assert_eq!(
        kms.describe_key("gone").unwrap_err().kind(),
        ErrorKind::KeyNotFound
    );
    assert!(kms.list_keys().unwrap().is_empty());
}

#[test]
fn re_encrypt_moves_a_data_key_to_another_key_and_context() {
    let (_dir, kms) = store();
    kms.create_key(Some("old"), "").unwrap();
    let new_id = kms.create_key(Some("new"), "").unwrap().key_id;
    let g = kms
        .generate_data_key("old", DataKeySpec::Aes256Xts, &ctx("a"))
        .unwrap();
    let moved = kms
        .re_encrypt(&g.wrapped, &ctx("a"), "new", &ctx("b"))
        .unwrap();
    assert_eq!(moved.key_id().unwrap(), new_id);
    assert_eq!(
        kms.decrypt(&moved, &ctx("b")).unwrap().expose(),
        g.plaintext.expose()
    );
    assert_eq!(
        kms.decrypt(&moved, &ctx("a")).unwrap_err().kind(),
        ErrorKind::Tampered
    );
}

#[test]
fn audit_log_records_operations_but_never_key_material() {
    let (dir, kms) = store();
    kms.create_key(Some("audited"), "").unwrap();
    let g = kms
        .generate_data_key("audited", DataKeySpec::Aes256Gcm, &ctx("x"))
        .unwrap();
    let _ = kms.decrypt(&g.wrapped, &ctx("wrong"));
    let log = std::fs::read_to_string(dir.path().join("kms/audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ops: Vec<&str> = lines
        .iter()
        .map(|l| l["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        ["CreateKeyStore", "CreateKey", "GenerateDataKey", "Decrypt"]
    );
    assert_eq!(lines[2]["encryption_context"]["pgseal:instance"], "x");
    assert_eq!(lines[3]["outcome"], "error");
    let hex: String = g
        .plaintext
        .expose()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(g.plaintext.expose());
    assert!(
        !log.contains(&hex) && !log.contains(&b64),
        "key material in the audit log"
    );
    let store_text = std::fs::read_to_string(dir.path().join("kms/keystore.json")).unwrap();
    assert!(!store_text.contains(&hex) && !store_text.contains(&b64));
}

#[test]
fn concurrent_creates_from_two_handles_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms");
    let a = LocalKms::open(&path, &pass()).unwrap();
    let b = LocalKms::open(&path, &pass()).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| (0..10).for_each(|i| drop(a.create_key(Some(&format!("a{i}")), "").unwrap())));
        s.spawn(|| (0..10).for_each(|i| drop(b.create_key(Some(&format!("b{i}")), "").unwrap())));
    });
    assert_eq!(a.list_keys().unwrap().len(), 20);
}
