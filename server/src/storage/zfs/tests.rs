use super::*;

#[test]
fn get_lines_keep_tabs_and_spaces_in_values() {
    let out =
        "walvault:a\thello world\tlocal\nwalvault:b\tx\ty \tinherited from t/x\nused\t12\t-\n";
    let lines = parse_get_lines("t", out, false).expect("parses");
    assert_eq!(lines[0].value, "hello world");
    assert_eq!(lines[1].value, "x\ty ");
    assert_eq!(lines[1].source, "inherited from t/x");
    let props = local_user_properties(&lines);
    assert_eq!(props.len(), 1);
    assert_eq!(props["a"], "hello world");
}

#[test]
fn get_lines_reject_garbage() {
    let err = parse_get_lines("t", "just one field\n", false).expect_err("must fail");
    assert!(matches!(err, StorageError::Parse { .. }), "{err}");
    let err = parse_get_lines("t", "a\tb\n", true).expect_err("must fail");
    assert!(matches!(err, StorageError::Parse { .. }), "{err}");
}

#[test]
fn numbers_are_strict() {
    assert_eq!(parse_u64("x", "1024").expect("number"), 1024);
    for bad in ["", "1K", "-1", " 1", "none"] {
        assert!(
            matches!(parse_u64("x", bad), Err(StorageError::Parse { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn property_keys_and_values() {
    check_property_key("backup.start-lsn:x_1").expect("valid key");
    for bad in [
        "",
        "Upper",
        "with space",
        "ü",
        "a=b",
        &"k".repeat(PROPERTY_KEY_MAX + 1),
    ] {
        assert!(check_property_key(bad).is_err(), "{bad:?}");
    }
    check_property_value("k", "with spaces\tand tab").expect("valid value");
    for bad in ["a\nb", "a\rb", "a\0b", &"v".repeat(PROPERTY_VALUE_MAX + 1)] {
        assert!(check_property_value("k", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn quoted_names() {
    let msg = "cannot create snapshot 'tank/wv/a@s': dataset already exists";
    assert_eq!(quoted(msg), Some("tank/wv/a@s"));
    assert_eq!(quoted("no quotes"), None);
}

#[test]
fn names_map_back_to_paths() {
    let s = ZfsStorage {
        root: "tank/wv".into(),
        compression: "lzjb".into(),
    };
    let p = DatasetPath::new(["a", "b"]).expect("valid");
    assert_eq!(s.dataset_name(&p), "tank/wv/a/b");
    assert_eq!(s.path_of("tank/wv/a/b@s"), Some(p));
    assert_eq!(s.path_of("tank/wv"), Some(DatasetPath::root()));
    assert_eq!(s.path_of("tank/wvx/a"), None);
    assert_eq!(s.path_of("other/a"), None);
}
