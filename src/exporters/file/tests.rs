use std::time::Duration;

use prost::Message;

use super::writer::Writer;
use super::*;
use crate::config::ComponentId;
use crate::otlp::ProfilesRequest;
use crate::otlp::synth::{request, valid};
use crate::pipeline::channel::channel;

fn cfg(
    path: std::path::PathBuf,
    format: FileFormat,
    rotation: Option<RotationConfig>,
) -> FileExporterConfig {
    FileExporterConfig {
        path,
        format,
        rotation: rotation.unwrap_or(RotationConfig {
            enabled: false,
            ..Default::default()
        }),
        flush_interval: Duration::from_millis(50),
        file_mode: FileMode::default(),
    }
}

/// Reads `<u32 BE length><protobuf>` records.
fn read_proto(bytes: &[u8]) -> Vec<ProfilesRequest> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(ProfilesRequest::decode(&rest[4..4 + len]).unwrap());
        rest = &rest[4 + len..];
    }
    out
}

async fn export(cfg: FileExporterConfig, reqs: Vec<ProfilesRequest>) {
    let (tx, rx) = channel();
    let ctx = Context::standalone("exporter", ComponentId::parse("file").unwrap());
    let h = Box::new(FileExporter { cfg })
        .start(ctx, Input::new(rx, None))
        .await
        .unwrap();
    for r in reqs {
        tx.send(valid(r).into()).await.unwrap();
    }
    drop(tx);
    h.await.unwrap();
}

#[tokio::test]
async fn proto_records_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/p.binpb");
    let reqs: Vec<_> = (0..3).map(|i| request("a", i * 10, 10, 4)).collect();
    export(cfg(path.clone(), FileFormat::Proto, None), reqs.clone()).await;
    assert_eq!(read_proto(&std::fs::read(&path).unwrap()), reqs);
}

#[tokio::test]
async fn json_lines_are_otlp_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.jsonl");
    let reqs: Vec<_> = (0..2).map(|i| request("a", i * 3, 3, 4)).collect();
    export(cfg(path.clone(), FileFormat::Json, None), reqs.clone()).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    for (line, req) in lines.iter().zip(&reqs) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        // lowerCamelCase keys, as OTLP/JSON requires.
        assert!(
            v["resourceProfiles"][0]["scopeProfiles"][0]["profiles"][0]["samples"].is_array(),
            "{line}"
        );
        assert!(v["dictionary"]["stringTable"].is_array());
        let back = crate::otlp::json::from_slice(line.as_bytes()).unwrap();
        assert_eq!(&back, req);
    }
}

#[tokio::test]
async fn rotates_by_size_and_keeps_max_backups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.binpb");
    let one = request("a", 0, 2000, 50);
    let size = one.encoded_len() as u64 + 4;
    // Each ~MiB-sized record forces a rotation with max_megabytes: 1.
    let n = (2 << 20) / size + 1;
    assert!(size < 1 << 20);
    let reqs: Vec<_> = (0..n * 3)
        .map(|i| request("a", i * 2000, 2000, 50))
        .collect();
    let total = reqs.len();
    export(
        cfg(
            path.clone(),
            FileFormat::Proto,
            Some(RotationConfig {
                enabled: true,
                max_megabytes: 1,
                max_backups: 2,
            }),
        ),
        reqs,
    )
    .await;
    let w = Writer::open(&cfg(
        path.clone(),
        FileFormat::Proto,
        Some(RotationConfig::default()),
    ))
    .unwrap();
    let backups = w.backups().unwrap();
    assert_eq!(backups.len(), 2, "{backups:?}");
    let mut kept = read_proto(&std::fs::read(&path).unwrap()).len();
    for (_, b) in &backups {
        let bytes = std::fs::read(b).unwrap();
        assert!(bytes.len() as u64 <= 1 << 20);
        kept += read_proto(&bytes).len();
    }
    assert!(kept < total, "older backups were deleted");
}

#[tokio::test]
async fn an_unwritable_path_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file-not-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let (_tx, rx) = channel();
    let ctx = Context::standalone("exporter", ComponentId::parse("file").unwrap());
    let err = Box::new(FileExporter {
        cfg: cfg(blocker.join("p.jsonl"), FileFormat::Json, None),
    })
    .start(ctx, Input::new(rx, None))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cannot open") && err.contains("exporters.file.path"),
        "{err}"
    );
}

#[test]
fn a_failed_reopen_is_retried_with_the_next_record_and_symlinks_are_refused() {
    use crate::exporters::shell::Writer as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.binpb");
    let mut w = Writer::open(&cfg(path.clone(), FileFormat::Proto, None)).unwrap();
    assert_eq!(w.write(valid(request("a", 0, 10, 5))).sent, 10);
    // As after a rotation whose reopen failed: the file is closed and its name is
    // taken, here by a symlink to a file the exporter must not write through.
    w.close_file();
    std::fs::rename(&path, dir.path().join("rotated")).unwrap();
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, b"").unwrap();
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let o = w.write(valid(request("a", 100, 10, 5)));
    assert_eq!(o.failed, 10, "{o:?}");
    assert!(o.error.is_some());
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"",
        "wrote through a symlink"
    );
    // The name is free again: the next record reopens the file and is written.
    std::fs::remove_file(&path).unwrap();
    let o = w.write(valid(request("a", 200, 10, 5)));
    assert_eq!(o.sent, 10, "{o:?}");
    assert_eq!(read_proto(&std::fs::read(&path).unwrap()).len(), 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "created with at most 0640: {mode:o}");
}
