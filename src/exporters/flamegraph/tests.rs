use super::*;
use crate::config::ComponentId;
use crate::otlp::synth::{expected_stack, request, valid};
use crate::pipeline::channel::channel;

#[test]
fn folded_stacks_go_root_to_leaf_and_sum_to_the_sample_count() {
    let req = request("svc", 0, 50, 7);
    let f = fold(&req, false);
    assert_eq!(f.total, 50);
    assert_eq!(f.lines.values().sum::<i64>(), 50);
    // Sample 3's stack, root first, each frame `function (file:line)`.
    let want: Vec<String> = expected_stack(3, 7)
        .iter()
        .rev()
        .map(|n| {
            let num: u64 = n.rsplit('_').next().unwrap().parse().unwrap();
            format!("{n} (app.rs:{})", 10 + num)
        })
        .collect();
    assert!(
        f.lines.contains_key(&want.join(";")),
        "{:?}",
        f.lines.keys().take(3).collect::<Vec<_>>()
    );
    for line in f.lines() {
        let (stack, count) = line.rsplit_once(' ').unwrap();
        assert!(!stack.is_empty() && count.parse::<i64>().unwrap() > 0);
    }
}

#[test]
fn unsymbolized_frames_show_module_and_offset_and_processes_get_towers() {
    let mut req = request("svc", 0, 4, 3);
    let d = req.dictionary.as_mut().unwrap();
    for l in &mut d.location_table {
        l.lines.clear();
    }
    let f = fold(&req, true);
    let any = f.lines.keys().next().unwrap().clone();
    // No pid attribute in the synthetic samples: the tower is named [unknown] [0].
    assert!(any.starts_with("[unknown] [0];app+0x"), "{any}");
}

#[tokio::test]
async fn writes_an_svg_that_parses_as_xml_and_names_the_functions() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = channel();
    let ctx = Context::standalone("exporter", ComponentId::parse("flamegraph").unwrap());
    let cfg = FlamegraphExporterConfig {
        directory: dir.path().join("fg"),
        folded: true,
        ..Default::default()
    };
    let h = Box::new(FlamegraphExporter { cfg })
        .start(ctx, Input::new(rx, None))
        .await
        .unwrap();
    tx.send(valid(request("svc", 0, 60, 5)).into())
        .await
        .unwrap();
    drop(tx);
    h.await.unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path().join("fg"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let svg = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "svg"))
        .expect("an svg");
    let text = std::fs::read_to_string(svg).unwrap();
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc =
        roxmltree::Document::parse_with_options(&text, opts).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(text.contains("app::module"), "function names in the SVG");
    let folded = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "folded"))
        .expect("folded");
    let total: i64 = std::fs::read_to_string(folded)
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<i64>().unwrap())
        .sum();
    assert_eq!(total, 60);
}
