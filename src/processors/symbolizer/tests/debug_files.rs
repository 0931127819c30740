//! Debug files found by build ID (also with compressed sections, and in a flat directory), and a gateway that reads only its debug directories.

use super::*;

/// Where a debug file for `id` lies under `debug_root`: `.build-id/ab/cdef….debug`.
fn debug_file_by_build_id(debug_root: &Path, id: &str) -> PathBuf {
    debug_root
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]))
}

fn strip_with_debug_by_build_id(bin: &Path, debug_root: &Path) -> (PathBuf, String) {
    let id = read_build_id(bin).unwrap().unwrap();
    let dbg = debug_file_by_build_id(debug_root, &id);
    std::fs::create_dir_all(dbg.parent().unwrap()).unwrap();
    run(
        "objcopy",
        &[
            "--only-keep-debug",
            bin.to_str().unwrap(),
            dbg.to_str().unwrap(),
        ],
    );
    let stripped = bin.with_extension("stripped");
    run(
        "objcopy",
        &[
            "--strip-all",
            bin.to_str().unwrap(),
            stripped.to_str().unwrap(),
        ],
    );
    (stripped, id)
}

#[test]
fn a_stripped_binary_with_its_debug_file_by_build_id_gives_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let vaddrs = c_addresses(&bin);
    let debug_root = dir.path().join("debug");
    let (stripped, id) = strip_with_debug_by_build_id(&bin, &debug_root);
    assert_eq!(
        read_build_id(&stripped).unwrap().as_deref(),
        Some(id.as_str())
    );

    let mut want = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    Worker::new(cfg(vec![])).symbolize(&mut want);
    // On the agent: the stripped file is on this host, its DWARF comes by build ID.
    let mut on_host = request_for(
        stripped.to_str().unwrap(),
        Some(&id),
        &stripped,
        &vaddrs,
        None,
    );
    Worker::new(cfg(vec![debug_root.clone()])).symbolize(&mut on_host);
    assert_eq!(lines_of(&on_host), lines_of(&want));
    // On a gateway: the file is not here and the process is gone; only the build ID is.
    let mut gateway = request_for(
        "/nonexistent/inlines",
        Some(&id),
        &bin,
        &vaddrs,
        Some(999_999_999),
    );
    Worker::new(cfg(vec![debug_root])).symbolize(&mut gateway);
    assert_eq!(lines_of(&gateway), lines_of(&want));
}

#[test]
fn a_debug_file_with_compressed_sections_gives_the_same_result_through_a_copy_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let vaddrs = c_addresses(&bin);
    let debug_root = dir.path().join("debug");
    let (stripped, id) = strip_with_debug_by_build_id(&bin, &debug_root);
    // As Debian's debug packages ship them: the DWARF sections zlib-compressed.
    let dbg = debug_file_by_build_id(&debug_root, &id);
    let plain = dir.path().join("plain.debug");
    std::fs::rename(&dbg, &plain).unwrap();
    run(
        "objcopy",
        &[
            "--compress-debug-sections=zlib",
            plain.to_str().unwrap(),
            dbg.to_str().unwrap(),
        ],
    );
    assert!(
        run("readelf", &["-SW", dbg.to_str().unwrap()])
            .lines()
            .any(|l| l.contains(".debug_info") && l.contains(" C "))
    );

    let mut want = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    Worker::new(cfg(vec![])).symbolize(&mut want);
    let Some(copies) = super::super::unpack::disk_tempdir() else {
        return;
    };
    for (decompress_dir, copies_made) in [(Some(copies.path().to_owned()), 1), (None, 0)] {
        let mut w = Worker::new(SymbolizerConfig {
            decompress_dir,
            ..cfg(vec![debug_root.clone()])
        });
        let mut got = request_for(
            stripped.to_str().unwrap(),
            Some(&id),
            &stripped,
            &vaddrs,
            None,
        );
        w.symbolize(&mut got);
        assert_eq!(lines_of(&got), lines_of(&want));
        assert_eq!(w.unpacked_files(), copies_made);
    }
}

#[test]
fn a_flat_debug_directory_is_indexed_by_build_id() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let id = read_build_id(&bin).unwrap().unwrap();
    let vaddrs = c_addresses(&bin);
    let flat = dir.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    let mut want = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    Worker::new(cfg(vec![])).symbolize(&mut want);

    let mut w = Worker::new(SymbolizerConfig {
        debug_dirs: vec![flat.clone()],
        rescan_interval: std::time::Duration::from_millis(1),
        ..Default::default()
    });
    // Not there yet: unresolved, address and mapping kept.
    let mut req = request_for("/gone/inlines", Some(&id), &bin, &vaddrs, None);
    let before = req.clone();
    w.symbolize(&mut req);
    assert_eq!(req, before, "an unresolved frame must be left as it was");
    // Added later: the directory change is noticed.
    std::fs::copy(&bin, flat.join("some-name")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut req = request_for("/gone/inlines2", Some(&id), &bin, &vaddrs, None);
    w.symbolize(&mut req);
    assert_eq!(lines_of(&req), lines_of(&want));
}

#[test]
fn with_only_debug_dirs_no_host_file_named_by_a_request_is_read() {
    use super::super::SymbolSource;
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path());
    let vaddrs = c_addresses(&bin);
    let debug_root = dir.path().join("debug");
    let (stripped, id) = strip_with_debug_by_build_id(&bin, &debug_root);
    let gateway = |debug_dirs: Vec<PathBuf>| SymbolizerConfig {
        sources: vec![SymbolSource::DebugDirs],
        ..cfg(debug_dirs)
    };
    // A request naming a real file on this machine (with its build ID, and as our own
    // pid) gets nothing from it when `host` is not a source...
    let mut named = request_for(
        bin.to_str().unwrap(),
        Some(&id),
        &bin,
        &vaddrs,
        Some(std::process::id() as i64),
    );
    Worker::new(gateway(vec![])).symbolize(&mut named);
    assert!(lines_of(&named).iter().all(Vec::is_empty));
    // ...while the same build ID in a debug directory symbolizes it.
    let mut want = request_for(bin.to_str().unwrap(), Some(&id), &bin, &vaddrs, None);
    Worker::new(cfg(vec![])).symbolize(&mut want);
    let mut by_id = request_for(
        stripped.to_str().unwrap(),
        Some(&id),
        &bin,
        &vaddrs,
        Some(std::process::id() as i64),
    );
    Worker::new(gateway(vec![debug_root])).symbolize(&mut by_id);
    assert_eq!(lines_of(&by_id), lines_of(&want));
}
