//! The bollard engine against the real daemon: connecting (socket, TLS,
//! unreachable), building, failing builds, running commands, cancellation;
//! against a stand-in daemon: the API version every request carries.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use habitus::engine::docker::{parse_api_version, DockerEngine, DockerOptions, MIN_API_VERSION};
use habitus::engine::{lines_only, BuildRequest, Engine, EngineError, LineSink, RunRequest};

use crate::common::fake_daemon::{self, FakeDaemon};
use crate::common::{
    base_image, containers_with_label, docker_available, engine, running_containers_with_label,
    tls_proxy, Cleanup, UID_LABEL,
};

/// A sink that keeps every line.
fn collector() -> (Arc<Mutex<Vec<String>>>, LineSink) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = lines.clone();
    let sink: LineSink = Arc::new(move |line: &str| kept.lock().unwrap().push(line.to_string()));
    (lines, sink)
}

/// A build request for a context holding only `dockerfile`.
fn request(dir: &Path, tag: &str, dockerfile: &str) -> BuildRequest {
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    BuildRequest {
        tag: tag.to_string(),
        context_dir: dir.to_path_buf(),
        dockerfile: "Dockerfile".to_string(),
        rm: true,
        force_rm: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn connects_to_the_local_socket_and_pings() {
    let engine = engine().await;
    engine.ping().await.unwrap();
    assert!(!engine.address().is_empty());
}

/// Prints which daemon the suite ran against (see it with `--nocapture`)
/// and checks the version habitus settled on.
#[tokio::test]
async fn negotiates_an_api_version_both_sides_speak_and_shows_the_daemon() {
    let engine = engine().await;
    let info = engine.daemon_info().await.unwrap();
    println!(
        "daemon at `{}`: Docker {}, API {} (min {}), negotiated {}, storage driver `{}`{}, BuildKit {}",
        engine.address(),
        info.version,
        info.api_version,
        info.min_api_version,
        info.negotiated,
        info.storage_driver,
        if info.driver_type.is_empty() {
            String::new()
        } else {
            format!(" ({})", info.driver_type)
        },
        if info.buildkit { "yes" } else { "no" },
    );
    let version = |v: &str| parse_api_version(v).unwrap_or_else(|| panic!("bad version `{v}`"));
    let negotiated = version(&info.negotiated);
    assert!(negotiated <= version(&info.api_version), "{info:?}");
    assert!(negotiated >= version(&info.min_api_version), "{info:?}");
    assert!(negotiated >= MIN_API_VERSION, "{info:?}");
    assert!(!info.version.is_empty() && !info.storage_driver.is_empty());
    // The containerd store names itself; the graph drivers do not.
    assert!(
        info.driver_type.is_empty() || info.driver_type.starts_with("io.containerd.snapshotter."),
        "{info:?}"
    );
}

#[tokio::test]
async fn an_unreachable_address_is_named_in_the_error() {
    // Port 1 on loopback refuses connections.
    let opts = DockerOptions {
        host: Some("tcp://127.0.0.1:1".into()),
        ..Default::default()
    };
    let err = DockerEngine::connect(&opts).await.unwrap_err();
    match &err {
        EngineError::Unreachable { address, .. } => assert_eq!(address, "tcp://127.0.0.1:1"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("cannot connect to the Docker daemon at `tcp://127.0.0.1:1`: "),
        "{err}"
    );

    let opts = DockerOptions {
        host: Some("unix:///nonexistent/docker.sock".into()),
        ..Default::default()
    };
    let err = DockerEngine::connect(&opts).await.unwrap_err();
    assert!(
        err.to_string().starts_with(
            "cannot connect to the Docker daemon at `unix:///nonexistent/docker.sock`: "
        ),
        "{err}"
    );
}

#[tokio::test]
async fn builds_with_labels_and_build_args_and_reuses_the_cache() {
    let base = base_image();
    let engine = engine().await;
    let cleanup = Cleanup::new("engine-build");
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("{}:latest", cleanup.uid());
    let mut req = request(
        dir.path(),
        &tag,
        &format!("FROM {base}\nARG GREETING\nRUN echo \"greeting=$GREETING\" > /greeting\n"),
    );
    req.build_args = BTreeMap::from([("GREETING".into(), "hello".into())]);
    req.labels = cleanup.labels();
    req.labels.insert("habitus.step".into(), "compile".into());

    let (lines, sink) = collector();
    let built = engine.build(req.clone(), lines_only(sink)).await.unwrap();
    assert!(built.id.starts_with("sha256:"), "{built:?}");
    // The daemon adds one LABEL step per requested label.
    assert_eq!(built.total_steps, 5, "{lines:?}");
    assert_eq!(built.cached_steps, 0);
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "Step 3/5 : RUN echo \"greeting=$GREETING\" > /greeting"),
        "{lines:?}"
    );

    let info = engine
        .inspect_image(&tag)
        .await
        .unwrap()
        .expect("image exists");
    assert_eq!(info.id, built.id);
    assert_eq!(
        info.labels.get(UID_LABEL).map(String::as_str),
        Some(cleanup.uid())
    );
    assert_eq!(
        info.labels.get("habitus.step").map(String::as_str),
        Some("compile")
    );
    assert_eq!(
        info.labels.get("habitus.test").map(String::as_str),
        Some("base")
    );
    let base_info = engine.inspect_image(&base).await.unwrap().unwrap();
    assert_eq!(info.layers, base_info.layers + 1);
    assert!(info.size > base_info.size);

    // The build arg reached the RUN: read the file back.
    let (out, sink) = collector();
    let code = engine
        .run(
            RunRequest {
                image: tag.clone(),
                command: "cat /greeting".into(),
                labels: cleanup.labels(),
                network_mode: None,
            },
            sink,
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(*out.lock().unwrap(), ["greeting=hello"]);

    let (_, sink) = collector();
    let again = engine.build(req, lines_only(sink)).await.unwrap();
    assert_eq!(again.id, built.id);
    // Everything but FROM comes from the cache.
    assert_eq!(again.cached_steps, 4);

    engine.remove_image(&tag, true, false).await.unwrap();
    assert_eq!(engine.inspect_image(&tag).await.unwrap(), None);
}

#[tokio::test]
async fn a_failing_run_reports_the_instruction_and_leaves_no_container() {
    let base = base_image();
    let engine = engine().await;
    let cleanup = Cleanup::new("engine-fail");
    let dir = tempfile::tempdir().unwrap();
    // The LABEL comes first so the RUN container carries it too.
    let req = request(
        dir.path(),
        &format!("{}:latest", cleanup.uid()),
        &format!(
            "FROM {base}\nLABEL {UID_LABEL}={}\nRUN echo boom && exit 3\n",
            cleanup.uid()
        ),
    );
    let (lines, sink) = collector();
    let err = engine.build(req, lines_only(sink)).await.unwrap_err();
    match &err {
        EngineError::BuildFailed {
            instruction,
            message,
            ..
        } => {
            assert_eq!(
                instruction.as_deref(),
                Some("Step 3/3 : RUN echo boom && exit 3")
            );
            assert_eq!(
                message,
                "The command '/bin/sh -c echo boom && exit 3' returned a non-zero code: 3"
            );
        }
        other => panic!("expected BuildFailed, got {other:?}"),
    }
    assert!(lines.lock().unwrap().iter().any(|l| l == "boom"));
    assert_eq!(
        containers_with_label(UID_LABEL, cleanup.uid()),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_missing_context_directory_is_a_context_error() {
    docker_available();
    let engine = engine().await;
    let cleanup = Cleanup::new("engine-noctx");
    let req = BuildRequest {
        tag: format!("{}:latest", cleanup.uid()),
        context_dir: "/nonexistent/context".into(),
        dockerfile: "Dockerfile".into(),
        ..Default::default()
    };
    let (_, sink) = collector();
    match engine.build(req, lines_only(sink)).await.unwrap_err() {
        EngineError::Context { path, .. } => assert_eq!(path, Path::new("/nonexistent/context")),
        other => panic!("expected Context, got {other:?}"),
    }
}

#[tokio::test]
async fn run_returns_the_exit_code_and_output_and_removes_the_container() {
    let base = base_image();
    let engine = engine().await;
    let cleanup = Cleanup::new("engine-run");
    let (lines, sink) = collector();
    let code = engine
        .run(
            RunRequest {
                image: base.clone(),
                command: "echo out; echo err >&2; printf partial; exit 7".into(),
                labels: cleanup.labels(),
                network_mode: Some("none".into()),
            },
            sink,
        )
        .await
        .unwrap();
    assert_eq!(code, 7);
    let mut lines = lines.lock().unwrap().clone();
    lines.sort();
    assert_eq!(lines, ["err", "out", "partial"]);
    assert_eq!(
        containers_with_label(UID_LABEL, cleanup.uid()),
        Vec::<String>::new()
    );

    // A command that cannot start is an error, and leaves nothing either.
    let (_, sink) = collector();
    let err = engine
        .run(
            RunRequest {
                image: base,
                command: "true".into(),
                labels: cleanup.labels(),
                network_mode: Some(format!("{}-no-such-network", cleanup.uid())),
            },
            sink,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Api(_)), "{err:?}");
    assert_eq!(
        containers_with_label(UID_LABEL, cleanup.uid()),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn remove_containers_with_label_counts_what_it_removed() {
    let base = base_image();
    let engine = engine().await;
    let cleanup = Cleanup::new("engine-sweep");
    for _ in 0..2 {
        crate::common::docker(&[
            "create",
            "--label",
            &format!("{UID_LABEL}={}", cleanup.uid()),
            &base,
            "true",
        ]);
    }
    assert_eq!(
        engine
            .remove_containers_with_label(UID_LABEL, cleanup.uid())
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        containers_with_label(UID_LABEL, cleanup.uid()),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn tls_with_the_right_client_certificate_works() {
    docker_available();
    let proxy = tls_proxy::start();
    let opts = DockerOptions {
        host: Some(proxy.host()),
        use_tls: true,
        cert_path: Some(proxy.cert_dir.clone()),
    };
    let engine = DockerEngine::connect(&opts).await.unwrap();
    assert_eq!(engine.address(), proxy.host());
    engine.ping().await.unwrap();
    let base = base_image();
    assert!(engine.inspect_image(&base).await.unwrap().is_some());
}

#[tokio::test]
async fn tls_with_a_client_certificate_from_another_ca_fails_clearly() {
    docker_available();
    let proxy = tls_proxy::start();
    let opts = DockerOptions {
        host: Some(proxy.host()),
        use_tls: true,
        cert_path: Some(proxy.bad_cert_dir.clone()),
    };
    let err = DockerEngine::connect(&opts).await.unwrap_err().to_string();
    // With TLS 1.3 the rejection comes after the client's handshake; when
    // the first request sees only the closed connection, habitus probes
    // the handshake again to name the certificate.
    let rejected = format!(
        "docker TLS settings: the daemon at `{}` did not accept the client certificate `{}`: received fatal alert: UnknownCA",
        proxy.host(),
        proxy.bad_cert_dir.join("cert.pem").display()
    );
    assert_eq!(err, rejected);
}

#[tokio::test]
async fn dropping_a_build_cancels_it() {
    let base = base_image();
    let engine = engine().await;
    let cleanup = Cleanup::new("engine-cancel");
    let dir = tempfile::tempdir().unwrap();
    let req = request(
        dir.path(),
        &format!("{}:latest", cleanup.uid()),
        &format!(
            "FROM {base}\nLABEL {UID_LABEL}={}\nRUN echo started && sleep 30\n",
            cleanup.uid()
        ),
    );
    let (lines, sink) = collector();
    let build = tokio::spawn(async move { engine.build(req, lines_only(sink)).await });

    let started = Instant::now();
    while !lines.lock().unwrap().iter().any(|l| l == "started") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the RUN never started: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        running_containers_with_label(UID_LABEL, cleanup.uid()).len(),
        1
    );
    build.abort();
    assert!(build.await.unwrap_err().is_cancelled());

    let dropped = Instant::now();
    while !running_containers_with_label(UID_LABEL, cleanup.uid()).is_empty() {
        assert!(
            dropped.elapsed() < Duration::from_secs(15),
            "the RUN container still runs after the build was dropped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // With `force_rm` the daemon also removes the stopped RUN container.
    while !containers_with_label(UID_LABEL, cleanup.uid()).is_empty() {
        assert!(
            dropped.elapsed() < Duration::from_secs(15),
            "the RUN container of the dropped build was not removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn dropping_a_run_removes_its_container() {
    let base = base_image();
    let engine = engine().await;
    let cleanup = Cleanup::new("engine-run-cancel");
    let (lines, sink) = collector();
    let labels = cleanup.labels();
    let run = tokio::spawn(async move {
        engine
            .run(
                RunRequest {
                    image: base,
                    command: "echo started; sleep 30".into(),
                    labels,
                    network_mode: None,
                },
                sink,
            )
            .await
    });
    let started = Instant::now();
    while !lines.lock().unwrap().iter().any(|l| l == "started") {
        assert!(started.elapsed() < Duration::from_secs(30), "never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        running_containers_with_label(UID_LABEL, cleanup.uid()).len(),
        1
    );
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());

    let dropped = Instant::now();
    while !containers_with_label(UID_LABEL, cleanup.uid()).is_empty() {
        assert!(
            dropped.elapsed() < Duration::from_secs(15),
            "the container of the dropped run is still there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The request lines the stand-in daemon saw after the ping and the
/// version request, which must go out unversioned (as the docker CLI sends
/// them) and first.
fn after_negotiation(daemon: &FakeDaemon) -> Vec<String> {
    let requests = daemon.requests();
    assert!(requests.len() > 2, "{requests:?}");
    assert_eq!(
        requests[..2],
        ["GET /_ping HTTP/1.1", "GET /version HTTP/1.1"],
        "{requests:?}"
    );
    requests[2..].to_vec()
}

/// Regression test for bollard issue #736: bollard 0.21 drops the version
/// from every request path, so each daemon answered at its own newest API
/// whatever was negotiated.
#[tokio::test]
async fn every_request_after_the_negotiation_carries_the_negotiated_version() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = fake_daemon::start(dir.path(), "1.41", b"not a tar".to_vec());
    let opts = DockerOptions {
        host: Some(daemon.host()),
        ..Default::default()
    };
    let engine = DockerEngine::connect(&opts).await.unwrap();
    engine.ping().await.unwrap();
    assert!(engine
        .inspect_image("hb-no-such-image")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        engine
            .remove_containers_with_label(UID_LABEL, "hb-none")
            .await
            .unwrap(),
        0
    );
    let mut saved = engine.save_image("hb-some-image").await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut saved).await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(bytes, b"not a tar");
    for _ in 0..8 {
        engine.ping().await.unwrap();
    }

    let later = after_negotiation(&daemon);
    assert!(later.len() >= 12, "{later:?}");
    for line in &later {
        let path = line.split(' ').nth(1).unwrap_or_default();
        assert!(path.starts_with("/v1.41/"), "unversioned: {later:?}");
    }
    // Connections are kept and reused, not opened for each request.
    assert!(
        daemon.connections() < later.len(),
        "{} connections for {} requests",
        daemon.connections(),
        later.len()
    );
}

#[tokio::test]
async fn a_daemon_newer_than_habitus_is_spoken_to_in_habitus_own_version() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = fake_daemon::start(dir.path(), "1.99", Vec::new());
    let opts = DockerOptions {
        host: Some(daemon.host()),
        ..Default::default()
    };
    let engine = DockerEngine::connect(&opts).await.unwrap();
    engine.ping().await.unwrap();
    let later = after_negotiation(&daemon);
    let path = later[0].split(' ').nth(1).unwrap_or_default();
    let version = path
        .strip_prefix("/v")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(version, _)| parse_api_version(version))
        .unwrap_or_else(|| panic!("unversioned: {later:?}"));
    assert!(version >= MIN_API_VERSION && version < (1, 99), "{later:?}");
}

#[tokio::test]
async fn a_daemon_older_than_api_1_38_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = fake_daemon::start(dir.path(), "1.30", Vec::new());
    let opts = DockerOptions {
        host: Some(daemon.host()),
        ..Default::default()
    };
    let err = DockerEngine::connect(&opts).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "docker: the daemon at `{}` speaks API `1.30`; habitus needs API `1.38` (Docker 18.06) or newer",
            daemon.host()
        )
    );
}
