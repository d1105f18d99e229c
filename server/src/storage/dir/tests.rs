use super::*;

#[test]
fn df_output_is_parsed_from_the_capacity_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let available = filesystem_available(dir.path()).expect("df works");
    assert!(available > 0);
}

#[test]
fn reserved_names_are_not_datasets_nor_snapshot_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = DirStorage::open(dir.path()).expect("open");
    let reserved = DatasetPath::new([".walvault-x"]).expect("valid component");
    assert!(matches!(
        s.create(&reserved, &DatasetOptions::default()),
        Err(StorageError::InvalidName(_))
    ));
    let ds = DatasetPath::new(["a"]).expect("valid");
    s.create(&ds, &DatasetOptions::default()).expect("create");
    fs::write(s.dir(&ds).join("f"), b"x").expect("write");
    s.snapshot(&ds, "s", false, &BTreeMap::new())
        .expect("snapshot");
    let data = s.snapshot_dir(&ds, "s").join(SNAPSHOT_DATA);
    let names: Vec<String> = fs::read_dir(&data)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["f"]);
}

#[test]
fn a_corrupt_marker_is_a_parse_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = DirStorage::open(dir.path()).expect("open");
    let ds = DatasetPath::new(["a"]).expect("valid");
    s.create(&ds, &DatasetOptions::default()).expect("create");
    fs::write(s.dir(&ds).join(MARKER), b"{not json").expect("write");
    let err = s.properties(&ds).expect_err("corrupt");
    assert!(matches!(err, StorageError::Parse { .. }), "{err}");
    assert!(err.to_string().contains(MARKER), "{err}");
}
