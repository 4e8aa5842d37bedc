//! A daemon reached over TCP and TLS from another network namespace, as a
//! CI job reaches GitLab's `docker:dind` service: the build network's
//! gateway is not an address of the host habitus runs on. Without
//! `--binding` a secrets build stops before any step, naming the fix; with
//! `--binding` (the job's own address) it fetches its secret and succeeds.
//! This is README's "CI recipes" remote-daemon job, run for real.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::common::{docker, from_base, project, tls_proxy};

/// A network namespace joined to this host by a veth pair: this host is
/// `host_ip`, the namespace `ns_ip`. Removed when dropped.
struct Netns {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "`ip {}`: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn create() -> Netns {
        let n = std::process::id() % 250 + 1;
        let third = (rand::random::<u8>() % 200) + 20;
        let name = format!("habitus-remote-{n}");
        let host_if = format!("hbrh{n}");
        let ns_if = format!("hbrn{n}");
        let host_ip = Ipv4Addr::new(10, 254, third, 1);
        let ns_ip = Ipv4Addr::new(10, 254, third, 2);
        ip(&["netns", "add", &name]);
        let netns = Netns {
            name,
            host_if,
            host_ip,
            ns_ip,
        };
        ip(&[
            "link",
            "add",
            &netns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &netns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &netns.host_if,
        ]);
        ip(&["link", "set", &netns.host_if, "up"]);
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &netns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        exec(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        exec(&["link", "set", &ns_if, "up"]);
        exec(&["link", "set", "lo", "up"]);
        netns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

const YML: &str = "build:
  version: 2016-03-14
  steps:
    app:
      name: habitus-test/remote
      dockerfile: Dockerfile
      secrets:
        key:
          type: file
          value: key.txt
";

const DOCKERFILE: &str = r#"ARG HABITUS_URL
ARG HABITUS_CA
ARG HABITUS_TOKEN
RUN printf '%s' "$HABITUS_CA" > /tmp/ca.pem \
 && curl -fsS --cacert /tmp/ca.pem -H "Authorization: Bearer $HABITUS_TOKEN" "$HABITUS_URL/v1/secrets/file/key" -o /tmp/k \
 && sha256sum /tmp/k | cut -d' ' -f1 > /key.sum \
 && rm -f /tmp/k /tmp/ca.pem
"#;

#[test]
fn a_remote_daemon_needs_binding_and_works_with_it() {
    if !is_root() {
        eprintln!("needs root (ip netns): runs in CI, which runs as root");
        return;
    }
    let netns = Netns::create();
    let proxy = tls_proxy::start_on(netns.host_ip);
    let key = format!("remote-key-{:016x}\n", rand::random::<u64>());
    let (h, cleanup) = project("remote", YML);
    let h = h
        .file("Dockerfile", from_base(DOCKERFILE))
        .file("key.txt", key.clone())
        .env("DOCKER_HOST", proxy.host())
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", proxy.cert_dir.display().to_string());

    // The GitLab recipe without `--binding`: stopped before any step.
    let out = h.run_in(&netns.name);
    out.assert_code(1);
    assert!(
        out.stderr.contains("is not an address of this host, so the secrets server cannot listen on it: the Docker daemon runs elsewhere"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("\nhint: give --binding ADDR, an address of this host that the daemon's containers reach"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("building `"), "{}", out.stderr);

    // With the job's own address, the step fetches its secret.
    let image = format!("habitus-test/remote-{}", cleanup.uid());
    let out = h
        .args(["--binding", &netns.ns_ip.to_string(), "--keep-all"])
        .run_in(&netns.name);
    out.assert_success();
    assert!(
        out.stderr.contains("GET /v1/secrets/file/key from "),
        "{}",
        out.stderr
    );
    assert_eq!(
        docker(&["run", "--rm", &image, "cat", "/key.sum"]).trim(),
        crate::common::sha256_hex(key.as_bytes())
    );
}
