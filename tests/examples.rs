//! Every directory under `examples/` is a valid build: its build.yml loads,
//! plans, and passes `habitus check`, so the examples cannot go stale.

use std::path::{Path, PathBuf};
use std::process::Command;

use habitus::manifest::{load, EnvSource, LoadOptions};
use habitus::plan::{render, Plan};

/// Every example directory, sorted; panics if there are none.
fn examples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read `{}`: {e}", root.display()))
        .map(|entry| entry.expect("readable examples directory").path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no examples under `{}`", root.display());
    dirs
}

/// Loads the example through the library and builds its plan.
fn load_and_plan(dir: &Path) -> (habitus::manifest::Manifest, Plan) {
    let file = dir.join("build.yml");
    let providers = ["file".to_owned(), "env".to_owned()];
    let loaded = load(&LoadOptions {
        file: &file,
        workdir: dir,
        env: &EnvSource::Process,
        sec_providers: &providers,
    })
    .unwrap_or_else(|diagnostics| panic!("`{}` does not load:\n{diagnostics}", file.display()));
    assert!(
        loaded.warnings.is_empty(),
        "`{}` has warnings: {:?}",
        file.display(),
        loaded.warnings
    );
    let nodes: Vec<(String, Vec<String>)> = loaded
        .manifest
        .steps
        .iter()
        .map(|s| (s.label.clone(), s.depends_on.clone()))
        .collect();
    let plan = Plan::new(&nodes)
        .unwrap_or_else(|errors| panic!("`{}` does not plan: {errors:?}", file.display()));
    (loaded.manifest, plan)
}

#[test]
fn every_example_loads_and_plans() {
    for dir in examples() {
        let (manifest, plan) = load_and_plan(&dir);
        assert!(!plan.is_empty(), "`{}` has no steps", dir.display());
        let text = render::text(&manifest, &plan);
        for step in &manifest.steps {
            assert!(text.contains(&step.label), "{text}");
        }
    }
}

/// `habitus check -f examples/X/build.yml -d examples/X` succeeds and lists
/// every step.
#[test]
fn every_example_passes_habitus_check() {
    for dir in examples() {
        let (manifest, _) = load_and_plan(&dir);
        let output = Command::new(env!("CARGO_BIN_EXE_habitus"))
            .arg("check")
            .arg("-f")
            .arg(dir.join("build.yml"))
            .arg("-d")
            .arg(&dir)
            .output()
            .expect("cannot run habitus");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "habitus check failed for `{}` ({}):\n{stdout}{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        for step in &manifest.steps {
            assert!(stdout.contains(&step.label), "{stdout}");
        }
    }
}

#[test]
fn secretapp_ships_the_build_artifact() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/secretapp");
    let (manifest, plan) = load_and_plan(&dir);
    let build = plan.index_of("build").expect("a `build` step");
    assert_eq!(plan.level(build), 0);
    let sources: Vec<&str> = manifest.steps[build]
        .artifacts
        .iter()
        .map(|a| a.source.as_str())
        .collect();
    assert_eq!(sources, ["/go/bin/secretapp"]);
    let mut runtimes: Vec<&str> = plan
        .dependents(build)
        .iter()
        .map(|&i| plan.label(i))
        .collect();
    runtimes.sort();
    assert_eq!(runtimes, ["alpine", "scratch"]);
    assert_eq!(plan.leaves().len(), 2);
}

#[test]
fn diamond_forks_and_joins() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/diamond");
    let (_, plan) = load_and_plan(&dir);
    let levels: Vec<Vec<&str>> = plan
        .levels()
        .iter()
        .map(|level| level.iter().map(|&i| plan.label(i)).collect())
        .collect();
    assert_eq!(levels, [vec!["a"], vec!["b", "c"], vec!["d"]]);
    let order: Vec<&str> = plan.order().iter().map(|&i| plan.label(i)).collect();
    assert_eq!(order, ["a", "b", "c", "d"]);
}

/// The diamond example builds end to end on the test base image, and
/// writes nothing into the example's folder.
#[test]
fn diamond_example_builds() {
    use crate::common::{base_image, docker, Cleanup};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/diamond");
    let before = std::fs::read_dir(&dir).unwrap().count();
    let cleanup = Cleanup::new("exdiamond");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_habitus"))
        .arg("-d")
        .arg(&dir)
        .args(["--uid", cleanup.uid(), "--build"])
        .arg(format!("BASE_IMAGE={}", base_image()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = format!("habitus-examples/diamond-d-{}", cleanup.uid());
    assert_eq!(docker(&["run", "--rm", &image]), "step a\nstep b\nstep c\n");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), before);
}
