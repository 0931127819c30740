//! The profiles read by readers we did not write: `go tool pprof`, and flamegraphs, with the workload's shares.

use super::*;

/// `go tool pprof` with a temporary home for what it saves.
fn go_pprof(args: &[&str], tmp: &Path) -> Option<String> {
    let t0 = std::time::Instant::now();
    // Names come from the profiles. Without this pprof would symbolize the agent's own
    // frames (left unnamed, `symbolize_self: false`) from this 200+ MB debug binary,
    // minutes of CPU.
    let own = if args.iter().any(|a| a.starts_with("-symbolize")) {
        None
    } else {
        Some("-symbolize=none")
    };
    let o = Command::new("go")
        .args(["tool", "pprof"])
        .args(own)
        .args(args)
        .env("PPROF_TMPDIR", tmp)
        .env("HOME", tmp)
        .output()
        .ok()?;
    assert!(
        o.status.success(),
        "go tool pprof {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "go tool pprof {} ... took {:?}",
        args.first().unwrap_or(&""),
        t0.elapsed()
    );
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The cum% of `func` in `go tool pprof -top -cum` output.
fn cum_share(top: &str, func: &str) -> f64 {
    top.lines()
        .find(|l| l.split_whitespace().last() == Some(func))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|p| p.trim_end_matches('%').parse::<f64>().ok())
        .map_or(0.0, |p| p / 100.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    any(missing = "root", missing = "gcc", missing = "go"),
    ignore = "needs root, gcc, go (Debian golang-go)"
)]
async fn go_tool_pprof_and_flamegraphs_show_the_workload_with_its_shares() {
    if !bpf_available("go_tool_pprof") {
        return;
    }
    let _serial = SYSTEM_WIDE.lock().await;
    if Command::new("go").arg("version").output().is_err() {
        stackline::testing::skip(
            "go_tool_pprof",
            "`go` is not installed (apt-get install golang-go; .ci/run installs it)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c_workload("cpu_shares", dir.path(), &[]);
    let cfg = agent_config("")
        .replace(
            "exporters:\n  file:",
            "processors:\n  symbolizer: {}\n  batch: { timeout: 200ms }\nexporters:\n  pprof: { directory: \"{DIR}/pprof\", endpoint: \"127.0.0.1:0\", max_files: 0 }\n  pprof/split: { directory: \"{DIR}/split\", split_by: process, max_files: 0 }\n  pprof/raw: { directory: \"\", endpoint: \"127.0.0.1:0\" }\n  flamegraph: { directory: \"{DIR}/fg\", folded: true, per_process: true, max_files: 0 }\n  file:",
        )
        .replace(
            "exporters: [file] }",
            "processors: [symbolizer, batch], exporters: [file, pprof, pprof/split, flamegraph] }, profiles/raw: { receivers: [ebpf_profiler], exporters: [pprof/raw] }",
        );
    let mut s = start_loaded(dir.path(), &cfg).await;
    let pull_port = s.listener("exporters.pprof.endpoint").port();
    let raw_port = s.listener("exporters.pprof/raw.endpoint").port();
    let mut workload = Command::new(&exe)
        .arg("6")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The pull endpoint, while the workload runs.
    let tmp = dir.path().join("gotmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let pull = |port: u16, symbolize: &'static [&'static str]| {
        let (url, tmp) = (
            format!("http://127.0.0.1:{port}/debug/pprof/profile"),
            tmp.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["-top", "-seconds", "5"];
            args.extend(symbolize);
            args.push(&url);
            go_pprof(&args, &tmp)
        })
    };
    // From the symbolized pipeline and from a raw one (unsymbolized mappings). For the
    // raw one pprof asks the endpoint for symbols: its default would read every
    // mapped binary's DWARF itself, minutes of CPU for this 200 MB debug test binary
    // that the agent samples along with everything else.
    let (live, raw) = (pull(pull_port, &[]), pull(raw_port, &["-symbolize=remote"]));
    let live = live.await.unwrap().unwrap();
    assert!(
        live.contains("spin") && live.contains("Type: samples"),
        "{live}"
    );
    let raw = raw.await.unwrap().unwrap();
    assert!(
        raw.contains("Type: samples") && raw.contains("Total samples"),
        "{raw}"
    );
    // go tool pprof posts here for mappings it cannot symbolize locally, and a 404
    // makes it fail (seen when a mapped file was not on this host): the endpoint must
    // answer that it has no symbols.
    let symbol = format!("http://127.0.0.1:{raw_port}/debug/pprof/symbol");
    let r = reqwest::get(&symbol).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "num_symbols: 0\n".to_owned())
    );
    let r = reqwest::Client::new()
        .post(&symbol)
        .body("0x401000+0x401010")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let out = {
        let o = workload.wait().unwrap();
        assert!(o.success());
        let mut buf = String::new();
        std::io::Read::read_to_string(workload.stdout.as_mut().unwrap(), &mut buf).unwrap();
        buf
    };
    let pid = out.trim().strip_prefix("ready ").unwrap().to_owned();
    // A clean stop writes the last interval everywhere. Retention is off in this test:
    // with one file per process per second, `max_files` would delete the workload's
    // files while a slow `go tool pprof` runs.
    s.sigterm();
    assert!(s.wait(Duration::from_secs(30)).success(), "{}", s.logs());

    // The workload's own files (split by process): its functions with their shares.
    let mine: Vec<String> = std::fs::read_dir(dir.path().join("split"))
        .unwrap()
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .filter(|p| p.contains(&format!("-pid{pid}-cpu_shares")))
        .collect();
    assert!(mine.len() >= 3, "{mine:?}");
    let mut args = vec!["-top", "-cum", "-nodecount=40"];
    args.extend(mine.iter().map(String::as_str));
    let top = go_pprof(&args, &tmp).unwrap();
    let (a, b, r) = (
        cum_share(&top, "hot_a"),
        cum_share(&top, "hot_b"),
        cum_share(&top, "read_zero"),
    );
    eprintln!("go tool pprof -top -cum: hot_a {a:.3} hot_b {b:.3} read_zero {r:.3}");
    assert!(
        (a - 0.60).abs() < 0.05 && (b - 0.30).abs() < 0.05 && (r - 0.10).abs() < 0.05,
        "{top}"
    );
    let mut args = vec!["-traces"];
    args.extend(mine.iter().map(String::as_str));
    let traces = go_pprof(&args, &tmp).unwrap();
    assert!(
        traces.contains("spin") && traces.contains("hot_a") && traces.contains("main"),
        "{traces}"
    );
    // The merged files hold every process, with pid labels.
    let merged: Vec<String> = std::fs::read_dir(dir.path().join("pprof"))
        .unwrap()
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .collect();
    let tf = format!("pid={pid}");
    let mut args = vec!["-top", "-tagfocus", tf.as_str()];
    args.extend(merged.iter().map(String::as_str));
    let focused = go_pprof(&args, &tmp).unwrap();
    assert!(focused.contains("spin"), "{focused}");

    // Flamegraphs: well-formed SVG naming the workload's functions; folded totals add up.
    let fg: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path().join("fg"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let svgs: Vec<&std::path::PathBuf> = fg
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "svg"))
        .collect();
    let mut named = false;
    for svg in &svgs {
        let text = std::fs::read_to_string(svg).unwrap();
        let opts = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        if let Err(e) = roxmltree::Document::parse_with_options(&text, opts) {
            panic!("{}: {e}", svg.display());
        }
        named |= text.contains("hot_a") && text.contains(&format!("cpu_shares [{pid}]"));
    }
    assert!(
        named,
        "no flamegraph shows the workload's tower and functions"
    );
    // After the drain, both the flamegraphs and the file hold the last batch.
    let fg: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path().join("fg"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let folded_total: i64 = fg
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "folded"))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<i64>().unwrap())
        .sum();
    // Folded counts are weights (summed values), so compare with the exported weight.
    let exported: i64 = read_json_lines(&dir.path().join("profiles.jsonl"))
        .iter()
        .flat_map(|r| {
            stackline::otlp::view::profiles(r)
                .flat_map(|p| &p.samples)
                .map(stackline::otlp::view::weight)
                .collect::<Vec<_>>()
        })
        .sum();
    assert_eq!(
        folded_total, exported,
        "folded lines sum to the exported sample weight"
    );
}
