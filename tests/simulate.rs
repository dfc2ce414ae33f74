//! `stagegate simulate` through the binary, on the shipped config and scenarios.

use std::process::Command;

fn simulate(scenario: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stagegate"))
        .args([
            "simulate",
            "--config",
            "config/stagegate.yaml",
            "--scenario",
            scenario,
        ])
        .output()
        .expect("run simulate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_segment_incident_is_contained_with_a_measured_blast_radius() {
    let (ok, out, err) = simulate("scenarios/quality-regression.yaml");
    assert!(ok, "{err}");
    assert!(out.contains("expand      internal -> smb-5"), "{out}");
    assert!(
        out.contains("rollback") && out.contains("[quality_mean in everyone]"),
        "{out}"
    );
    let radius: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("blast radius: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a blast radius line");
    assert!(
        radius > 0 && radius < 2000,
        "{radius}: the incident must be contained quickly\n{out}"
    );
    assert!(out.contains("before containment"), "{out}");
}

#[test]
fn a_healthy_candidate_climbs_and_is_never_rolled_back() {
    let (ok, out, err) = simulate("scenarios/healthy.yaml");
    assert!(ok, "{err}");
    assert!(out.contains("smb-5 -> half"), "{out}");
    assert!(
        !out.contains("rollback") && !out.contains("narrow"),
        "{out}"
    );
    assert!(out.contains("blast radius: 0 tasks"), "{out}");
}

#[test]
fn simulation_is_deterministic() {
    assert_eq!(
        simulate("scenarios/quality-regression.yaml").1,
        simulate("scenarios/quality-regression.yaml").1
    );
}

#[test]
fn a_bad_scenario_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("s.yaml");
    std::fs::write(
        &path,
        "duration: 1h\ntraffic: []\nbaseline: {}\ncandidate: {}\nsurprise: 1\n",
    )
    .expect("write");
    let (ok, _, err) = simulate(path.to_str().expect("utf-8 path"));
    assert!(!ok);
    assert!(err.contains("surprise"), "{err}");
}
