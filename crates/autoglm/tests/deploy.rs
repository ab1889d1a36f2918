//! The deploy artefacts, checked with the real tools. A missing tool fails the test and says how
//! to get it: these checks never skip.
//!
//! - `deploy/kubernetes`: `helm lint --strict`; `helm template` with the default values, the
//!   secured example and a created Secret; the rendered objects' structure (the StatefulSet, its
//!   headless Service, probes, instance id, volume, grace period, PDB, ServiceMonitor, Secret);
//!   the rendered config, on a copy of the pod's mounts, through `autoglm validate`; the keys
//!   the chart owns refused.
//! - `deploy/systemd`: `systemd-analyze verify`, and `systemd-analyze security` under an
//!   exposure ceiling; the stop timeout above the config's `shutdown_timeout`.
//! - `deploy/observability`: `promtool check rules` and `promtool test rules` (and that the
//!   unit tests catch a broken rule); the dashboard's queries parsed by promtool; every metric
//!   the dashboard and the rules name served by a real `autoglm run` on the local stack.
//!
//! Tools: helm and promtool from `AUTOGLM_TOOLS_BIN` (default `~/.cache/open-autoglm/tools/bin`,
//! where `make tools` builds them); `systemd-analyze` from the system.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use autoglm_tests::{repo_root, stack, unique};
use common::{Job, Names};
use serde_yaml::Value;

const CHART: &str = "deploy/kubernetes/autoglm";
const UNIT: &str = "deploy/systemd/autoglm.service";
const RULES: &str = "deploy/observability/alerts.yaml";
const RULE_TESTS: &str = "deploy/observability/alerts.test.yaml";
const DASHBOARD: &str = "deploy/observability/grafana-dashboard.json";
const BENCH: &str = "bench/results/baseline.json";

// ---------------------------------------------------------------------------------------------
// Tools

/// A Go tool that `make tools` builds.
fn tool(name: &str) -> PathBuf {
    let bin = std::env::var_os("AUTOGLM_TOOLS_BIN").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/open-autoglm/tools/bin")
        },
        PathBuf::from,
    );
    let path = bin.join(name);
    assert!(
        path.is_file(),
        "{name} is not in {}: build it with `make tools` (or `bash deploy/local/tools.sh {name}`), \
         or set AUTOGLM_TOOLS_BIN to a directory that has it",
        bin.display()
    );
    path
}

fn systemd_analyze() -> PathBuf {
    let path = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    path.unwrap_or_else(|| {
        panic!("systemd-analyze is missing: install systemd (`apt-get install systemd`)")
    })
}

fn output(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Runs `command` in the repository root; its stdout, or a panic with its output.
fn run(command: &mut Command) -> String {
    let out = output(command.current_dir(repo_root()));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs `command` in the repository root, which must fail; its stderr and stdout.
fn run_failing(command: &mut Command) -> String {
    let out = output(command.current_dir(repo_root()));
    assert!(
        !out.status.success(),
        "{command:?} succeeded, expected a failure:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// A directory of its own under the system's temporary directory, removed on drop unless the
/// test failed.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(unique("autoglm-deploy"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Scratch(dir)
    }

    fn write(&self, relative: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(relative);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, content).expect("write");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// YAML helpers

/// `value` at `path` (map keys; numbers index sequences), or a panic naming the path.
fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    let mut current = value;
    for (i, key) in path.iter().enumerate() {
        let next = match (current, key.parse::<usize>()) {
            (Value::Sequence(items), Ok(index)) => items.get(index),
            (Value::Mapping(map), _) => map.get(*key),
            _ => None,
        };
        current = next.unwrap_or_else(|| {
            panic!(
                "no {} in {}",
                path[..=i].join("."),
                serde_yaml::to_string(value).unwrap_or_default()
            )
        });
    }
    current
}

fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{} is not text", path.join(".")))
}

fn items<'a>(value: &'a Value, path: &[&str]) -> &'a [Value] {
    at(value, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{} is not a list", path.join(".")))
}

/// A map of text to text (labels, selectors).
fn labels(value: &Value, path: &[&str]) -> BTreeMap<String, String> {
    at(value, path)
        .as_mapping()
        .unwrap_or_else(|| panic!("{} is not a map", path.join(".")))
        .iter()
        .map(|(k, v)| {
            let text = |v: &Value| v.as_str().expect("a text label").to_owned();
            (text(k), text(v))
        })
        .collect()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// The entry of `list` whose `name` is `name`.
fn named<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter()
        .find(|item| item.get("name").and_then(Value::as_str) == Some(name))
}

/// A Kubernetes memory quantity (`256Mi`, `1Gi`, `500M`) in MiB.
fn mib(quantity: &str) -> f64 {
    let (number, factor) = [
        ("Ki", 1.0 / 1024.0),
        ("Mi", 1.0),
        ("Gi", 1024.0),
        ("K", 1e3 / 1048576.0),
        ("M", 1e6 / 1048576.0),
        ("G", 1e9 / 1048576.0),
    ]
    .into_iter()
    .find_map(|(suffix, factor)| quantity.strip_suffix(suffix).map(|n| (n, factor)))
    .unwrap_or((quantity, 1.0 / 1048576.0));
    number.parse::<f64>().expect("a memory quantity") * factor
}

// ---------------------------------------------------------------------------------------------
// The bench's memory figures

/// Peak RSS (MiB) from `make bench`: with 1 million keys in the state, and the highest of all.
fn bench_rss() -> (f64, f64) {
    let text = std::fs::read_to_string(repo_root().join(BENCH)).expect("read the bench baseline");
    let bench: serde_json::Value = serde_json::from_str(&text).expect("bench JSON");
    let mut all = Vec::new();
    collect_rss(&bench, &mut all);
    let million = bench["key_scaling"]
        .as_array()
        .and_then(|scales| {
            scales
                .iter()
                .find(|s| s["keys"].as_u64() == Some(1_000_000))
        })
        .and_then(|s| s["peak_rss_mib"].as_f64())
        .expect("the bench's peak RSS with 1 million keys");
    let highest = all.into_iter().fold(0.0, f64::max);
    (million, highest)
}

fn collect_rss(value: &serde_json::Value, into: &mut Vec<f64>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match value.as_f64() {
                    Some(rss) if key == "peak_rss_mib" => into.push(rss),
                    _ => collect_rss(value, into),
                }
            }
        }
        serde_json::Value::Array(values) => values.iter().for_each(|v| collect_rss(v, into)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The Helm chart

fn helm_template(release: &str, args: &[&str]) -> Vec<Value> {
    let rendered = run(Command::new(tool("helm"))
        .args(["template", release, CHART])
        .args(args));
    let mut documents = vec![String::new()];
    for line in rendered.lines() {
        if line == "---" {
            documents.push(String::new());
        } else {
            let last = documents.last_mut().expect("a document");
            last.push_str(line);
            last.push('\n');
        }
    }
    documents
        .iter()
        .map(|document| serde_yaml::from_str::<Value>(document).expect("rendered YAML"))
        .filter(|document| !document.is_null())
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some(kind))
        .collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    match of_kind(objects, kind).as_slice() {
        [one] => one,
        other => panic!("expected one {kind}, rendered {}", other.len()),
    }
}

/// How a render's Secret should look.
enum SecretIs<'a> {
    /// No Secret and no mount.
    Absent,
    /// An existing Secret, mounted; the test provides its files for validation.
    Existing(&'a str, &'a [(&'a str, &'a str)]),
    /// The chart's own Secret, with these keys.
    Created(&'a [&'a str]),
}

/// What a render should hold.
struct Expect<'a> {
    release: &'a str,
    replicas: u64,
    instance_id_field: &'a str,
    secret: SecretIs<'a>,
    service_monitor: bool,
    pdb: bool,
    schemas: &'a [&'a str],
}

/// Checks the rendered objects' structure, then validates the rendered config on a copy of the
/// pod's mounts.
fn check_release(objects: &[Value], expect: &Expect) {
    let sts = one(objects, "StatefulSet");
    let pod = at(sts, &["spec", "template"]);
    let pod_labels = labels(pod, &["metadata", "labels"]);
    let selector = labels(sts, &["spec", "selector", "matchLabels"]);
    assert!(
        is_subset(&selector, &pod_labels),
        "the selector {selector:?} does not select the pods {pod_labels:?}"
    );
    assert_eq!(
        selector
            .get("app.kubernetes.io/instance")
            .map(String::as_str),
        Some(expect.release)
    );
    for object in objects {
        assert!(
            is_subset(&selector, &labels(object, &["metadata", "labels"])),
            "{} {} lacks the release's labels",
            text(object, &["kind"]),
            text(object, &["metadata", "name"])
        );
    }
    assert_eq!(
        at(sts, &["spec", "replicas"]).as_u64(),
        Some(expect.replicas)
    );
    assert_eq!(text(sts, &["spec", "podManagementPolicy"]), "Parallel");

    // The headless Service is the StatefulSet's, and lists unready pods for scraping.
    let service_name = text(sts, &["spec", "serviceName"]);
    let services = of_kind(objects, "Service");
    let service = services
        .iter()
        .find(|s| text(s, &["metadata", "name"]) == service_name)
        .unwrap_or_else(|| panic!("no Service {service_name} (the StatefulSet's serviceName)"));
    assert_eq!(
        text(service, &["spec", "clusterIP"]),
        "None",
        "not headless"
    );
    assert_eq!(
        labels(service, &["spec", "selector"]),
        selector,
        "the Service selects other pods than the StatefulSet"
    );
    assert_eq!(
        at(service, &["spec", "publishNotReadyAddresses"]).as_bool(),
        Some(true)
    );

    // One container, run on the mounted config.
    let spec = at(pod, &["spec"]);
    let containers = items(spec, &["containers"]);
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let mounts = items(container, &["volumeMounts"]);
    let mount_of = |volume: &str| named(mounts, volume).map(|m| text(m, &["mountPath"]).to_owned());
    let config_dir = mount_of("config").expect("the config volume is mounted");
    let args: Vec<&str> = items(container, &["args"])
        .iter()
        .map(|a| a.as_str().expect("text"))
        .collect();
    let config_path = format!("{config_dir}/config.yaml");
    assert_eq!(args, ["run", "--config", config_path.as_str()]);
    let volumes = items(spec, &["volumes"]);
    let config_volume = named(volumes, "config").expect("a config volume");
    let configmap = one(objects, "ConfigMap");
    assert_eq!(
        text(config_volume, &["configMap", "name"]),
        text(configmap, &["metadata", "name"])
    );
    // ConfigMap key → path in the mount.
    let files: BTreeMap<&str, &str> = items(config_volume, &["configMap", "items"])
        .iter()
        .map(|i| (text(i, &["key"]), text(i, &["path"])))
        .collect();
    assert_eq!(files.get("config.yaml"), Some(&"config.yaml"));
    for schema in expect.schemas {
        assert_eq!(
            files.get(schema).copied(),
            Some(format!("schemas/{schema}").as_str()),
            "schema {schema} is not mounted under schemas/"
        );
        at(configmap, &["data", schema]);
    }
    let config_text = text(configmap, &["data", "config.yaml"]);
    let config: Value = serde_yaml::from_str(config_text).expect("config.yaml is YAML");

    // The instance id from the pod's ordinal, through the downward API.
    let env = items(container, &["env"]);
    let instance = named(env, "AUTOGLM__KAFKA__INSTANCE_ID").expect("the instance id env");
    assert_eq!(
        text(instance, &["valueFrom", "fieldRef", "fieldPath"]),
        expect.instance_id_field
    );

    // Probes on the metrics port, which the config listens on and the Service exposes.
    let port = named(items(container, &["ports"]), "metrics").expect("a metrics port");
    let port_number = at(port, &["containerPort"])
        .as_u64()
        .expect("a port number");
    let listen = text(&config, &["metrics", "listen"]);
    assert!(
        listen.ends_with(&format!(":{port_number}")),
        "metrics.listen {listen} is not the container's metrics port {port_number}"
    );
    for (probe, path) in [
        ("startupProbe", "/health"),
        ("livenessProbe", "/health"),
        ("readinessProbe", "/ready"),
    ] {
        let get = at(container, &[probe, "httpGet"]);
        assert_eq!(text(get, &["path"]), path, "{probe}");
        let port = at(get, &["port"]);
        assert!(
            port.as_str() == Some("metrics") || port.as_u64() == Some(port_number),
            "{probe} is not on the metrics port: {port:?}"
        );
    }
    let service_port =
        named(items(service, &["spec", "ports"]), "metrics").expect("a metrics Service port");
    let target = at(service_port, &["targetPort"]);
    assert!(target.as_str() == Some("metrics") || target.as_u64() == Some(port_number));

    // The state on the claim template, which carries no label that changes on upgrade
    // (volumeClaimTemplates cannot change).
    let claims = items(sts, &["spec", "volumeClaimTemplates"]);
    let claim = claims
        .iter()
        .find(|c| text(c, &["metadata", "name"]) == "state")
        .expect("a volume claim template named state");
    at(claim, &["spec", "resources", "requests", "storage"]);
    let claim_labels = labels(claim, &["metadata", "labels"]);
    assert!(
        claim_labels.keys().all(|k| selector.contains_key(k)),
        "claim labels {claim_labels:?} would change on upgrade"
    );
    let state_dir = mount_of("state").expect("the state volume is mounted");
    let storage = text(&config, &["event_queue", "storage_path"]);
    assert!(
        storage.starts_with(&format!("{state_dir}/")),
        "event_queue.storage_path {storage} is not on the state volume ({state_dir})"
    );
    assert_eq!(
        text(
            sts,
            &["spec", "persistentVolumeClaimRetentionPolicy", "whenScaled"]
        ),
        "Delete"
    );

    // Hardened pod.
    assert_eq!(
        at(spec, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
    let hardening = at(container, &["securityContext"]);
    assert_eq!(
        at(hardening, &["readOnlyRootFilesystem"]).as_bool(),
        Some(true)
    );
    assert_eq!(
        at(hardening, &["allowPrivilegeEscalation"]).as_bool(),
        Some(false)
    );
    assert!(
        items(hardening, &["capabilities", "drop"])
            .iter()
            .any(|c| c.as_str() == Some("ALL"))
    );
    at(pod, &["metadata", "annotations", "checksum/config"]);

    // Memory sized from the bench: the request holds the 1M-key peak, the limit every peak.
    let (million, highest) = bench_rss();
    let request = mib(text(container, &["resources", "requests", "memory"]));
    let limit = mib(text(container, &["resources", "limits", "memory"]));
    assert!(
        request >= million,
        "memory request {request} MiB is below the bench's 1M-key peak RSS ({million:.1} MiB)"
    );
    assert!(
        limit >= highest * 1.2,
        "memory limit {limit} MiB leaves under 20% above the bench's highest peak RSS ({highest:.1} MiB)"
    );

    // The disruption budget covers exactly these pods, one at a time.
    let pdbs = of_kind(objects, "PodDisruptionBudget");
    if expect.pdb {
        let [pdb] = pdbs.as_slice() else {
            panic!("expected one PodDisruptionBudget, rendered {}", pdbs.len())
        };
        assert_eq!(labels(pdb, &["spec", "selector", "matchLabels"]), selector);
        assert_eq!(at(pdb, &["spec", "maxUnavailable"]).as_u64(), Some(1));
    } else {
        assert!(pdbs.is_empty());
    }

    // The ServiceMonitor scrapes the headless Service's metrics port.
    let monitors = of_kind(objects, "ServiceMonitor");
    if expect.service_monitor {
        let [monitor] = monitors.as_slice() else {
            panic!("expected one ServiceMonitor, rendered {}", monitors.len())
        };
        assert!(is_subset(
            &labels(monitor, &["spec", "selector", "matchLabels"]),
            &labels(service, &["metadata", "labels"])
        ));
        let endpoints = items(monitor, &["spec", "endpoints"]);
        assert_eq!(endpoints.len(), 1);
        assert_eq!(
            text(&endpoints[0], &["port"]),
            text(service_port, &["name"])
        );
        assert_eq!(text(&endpoints[0], &["path"]), "/metrics");
    } else {
        assert!(
            monitors.is_empty(),
            "a ServiceMonitor that was not asked for"
        );
    }

    // Secrets as a Secret, mounted read-only as files.
    let secrets = of_kind(objects, "Secret");
    let secret_volume = named(volumes, "secrets");
    let secret_files: Vec<(String, String)> = match expect.secret {
        SecretIs::Absent => {
            assert!(secrets.is_empty() && secret_volume.is_none() && mount_of("secrets").is_none());
            Vec::new()
        }
        SecretIs::Existing(name, files) => {
            assert!(secrets.is_empty(), "a Secret beside the existing one");
            let volume = secret_volume.expect("a secrets volume");
            assert_eq!(text(volume, &["secret", "secretName"]), name);
            files
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        }
        SecretIs::Created(keys) => {
            let [secret] = secrets.as_slice() else {
                panic!("expected one Secret, rendered {}", secrets.len())
            };
            let data = labels(secret, &["stringData"]);
            assert_eq!(
                data.keys().map(String::as_str).collect::<Vec<_>>(),
                keys.to_vec()
            );
            let volume = secret_volume.expect("a secrets volume");
            assert_eq!(
                text(volume, &["secret", "secretName"]),
                text(secret, &["metadata", "name"])
            );
            data.into_iter().collect()
        }
    };
    if let Some(mount) = named(mounts, "secrets") {
        assert_eq!(at(mount, &["readOnly"]).as_bool(), Some(true));
    }

    // The config, on a copy of the pod's mounts, validates; the grace period outlasts its drain.
    let shutdown = validate_rendered(
        objects,
        &config_dir,
        mount_of("secrets").as_deref(),
        &secret_files,
        container,
    );
    let grace = at(spec, &["terminationGracePeriodSeconds"])
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(grace) > shutdown,
        "terminationGracePeriodSeconds {grace} is not above shutdown_timeout {shutdown:?}"
    );
}

/// Lays the ConfigMap's files and the Secret's files out as the pod sees them (under a scratch
/// directory instead of their mount paths, which the config's paths are rewritten to), then
/// loads the config and runs `autoglm validate` and `print-config` with the container's
/// environment. Returns `shutdown_timeout`.
fn validate_rendered(
    objects: &[Value],
    config_dir: &str,
    secrets_dir: Option<&str>,
    secret_files: &[(String, String)],
    container: &Value,
) -> Duration {
    let scratch = Scratch::new();
    let local_config = scratch.0.join("config");
    let local_secrets = scratch.0.join("secrets");
    let rewrite = |text: &str| {
        let text = text.replace(config_dir, &local_config.display().to_string());
        match secrets_dir {
            Some(dir) => text.replace(dir, &local_secrets.display().to_string()),
            None => text,
        }
    };
    let sts = one(objects, "StatefulSet");
    let volumes = items(sts, &["spec", "template", "spec", "volumes"]);
    let configmap = one(objects, "ConfigMap");
    for item in items(
        named(volumes, "config").expect("config volume"),
        &["configMap", "items"],
    ) {
        let content = text(configmap, &["data", text(item, &["key"])]);
        scratch.write(
            &format!("config/{}", text(item, &["path"])),
            rewrite(content),
        );
    }
    for (key, value) in secret_files {
        scratch.write(&format!("secrets/{key}"), value);
    }
    let config_file = local_config.join("config.yaml");
    let config = autoglm_config::load(&config_file)
        .unwrap_or_else(|e| panic!("the rendered config does not load: {e}"));

    // The container's environment, with the downward API's values as a pod would get them.
    let mut env: Vec<(String, String)> = Vec::new();
    for var in items(container, &["env"]) {
        let name = text(var, &["name"]).to_owned();
        let value = if let Some(value) = var.get("value") {
            value.as_str().expect("an env value").to_owned()
        } else if let Some(field) = var.get("valueFrom").and_then(|v| v.get("fieldRef")) {
            match text(field, &["fieldPath"]) {
                "metadata.labels['apps.kubernetes.io/pod-index']" => "1".to_owned(),
                "metadata.name" => "release-autoglm-1".to_owned(),
                other => panic!("an env var from an unexpected field: {other}"),
            }
        } else if var
            .get("valueFrom")
            .and_then(|v| v.get("resourceFieldRef"))
            .is_some()
        {
            "1".to_owned()
        } else {
            panic!("an env var from an unexpected source: {var:?}");
        };
        env.push((name, value));
    }
    let autoglm = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_autoglm"));
        command.env_clear().envs(env.iter().cloned());
        command
    };
    let validated = run(autoglm().arg("validate").arg(&config_file));
    assert!(validated.contains(": ok ("), "{validated}");
    let effective: Value = serde_yaml::from_str(&run(autoglm()
        .arg("print-config")
        .arg("--config")
        .arg(&config_file)))
    .expect("print-config YAML");
    let id = env
        .iter()
        .find(|(k, _)| k == "AUTOGLM__KAFKA__INSTANCE_ID")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        Some(text(&effective, &["kafka", "instance_id"])),
        id,
        "the pod's instance id does not reach kafka.instance_id"
    );
    config.shutdown_timeout
}

#[test]
fn chart_lints_strictly() {
    let helm = tool("helm");
    run(Command::new(&helm).args(["lint", "--strict", CHART]));
    run(Command::new(&helm).args([
        "lint",
        "--strict",
        CHART,
        "-f",
        "deploy/kubernetes/examples/secured.yaml",
    ]));
}

#[test]
fn chart_defaults_render_a_group_that_validates() {
    let objects = helm_template("autoglm", &[]);
    check_release(
        &objects,
        &Expect {
            release: "autoglm",
            replicas: 2,
            instance_id_field: "metadata.labels['apps.kubernetes.io/pod-index']",
            secret: SecretIs::Absent,
            service_monitor: false,
            pdb: true,
            schemas: &[],
        },
    );
    // Kubernetes 1.28 is the oldest the chart takes.
    helm_template("autoglm", &["--kube-version", "1.28.0"]);
    let refused = run_failing(
        Command::new(tool("helm"))
            .args(["template", "autoglm", CHART])
            .args(["--kube-version", "1.27.0"]),
    );
    assert!(refused.contains("kubeVersion"), "{refused}");
}

#[test]
fn chart_secured_example_renders_with_an_existing_secret_and_a_service_monitor() {
    let schema = "erp.customers-value.avsc";
    let objects = helm_template(
        "crm-sync",
        &[
            "-f",
            "deploy/kubernetes/examples/secured.yaml",
            "--set-file",
            &format!("schemas.{}=schemas/{schema}", schema.replace('.', "\\.")),
            "--set",
            "replicas=5",
            "--set",
            "instanceId.from=podName",
        ],
    );
    check_release(
        &objects,
        &Expect {
            release: "crm-sync",
            replicas: 5,
            instance_id_field: "metadata.name",
            secret: SecretIs::Existing(
                "autoglm-kafka",
                &[
                    ("kafka-password", "hunter2\n"),
                    ("ca.pem", "not read by validate"),
                ],
            ),
            service_monitor: true,
            pdb: true,
            schemas: &[schema],
        },
    );
}

#[test]
fn chart_creates_a_secret_and_keeps_the_grace_period_above_a_longer_drain() {
    let objects = helm_template(
        "sync",
        &[
            "--set",
            "replicas=1",
            "--set",
            "shutdownTimeoutSeconds=120",
            "--set",
            "podDisruptionBudget.enabled=false",
            "--set-string",
            "secret.data.kafka-password=hunter2",
            "--set-json",
            r#"config.kafka.security={"sasl":{"mechanism":"scram-sha-256","username":"autoglm","password":{"file":"/etc/autoglm/secrets/kafka-password"}}}"#,
        ],
    );
    check_release(
        &objects,
        &Expect {
            release: "sync",
            replicas: 1,
            instance_id_field: "metadata.labels['apps.kubernetes.io/pod-index']",
            secret: SecretIs::Created(&["kafka-password"]),
            service_monitor: false,
            pdb: false,
            schemas: &[],
        },
    );
    let grace = at(
        one(&objects, "StatefulSet"),
        &["spec", "template", "spec", "terminationGracePeriodSeconds"],
    );
    assert_eq!(grace.as_u64(), Some(135));
}

#[test]
fn chart_refuses_the_config_keys_it_sets_itself() {
    for (set, names) in [
        ("config.shutdown_timeout=10s", "shutdownTimeoutSeconds"),
        ("config.metrics.listen=0.0.0.0:1", "metrics.port"),
        ("config.kafka.instance_id=7", "instanceId.from"),
        (
            "config.event_queue.storage_path=/data",
            "persistence.mountPath",
        ),
    ] {
        let refused = run_failing(
            Command::new(tool("helm")).args(["template", "autoglm", CHART, "--set", set]),
        );
        assert!(
            refused.contains(names),
            "`--set {set}` is refused without naming {names}: {refused}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// systemd

/// The `[Service]` settings of a unit file (a key set twice keeps both values).
fn service_settings(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut section = "";
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]"
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            settings
                .entry(key.to_owned())
                .or_default()
                .push(value.to_owned());
        }
    }
    settings
}

/// The one value of `key`.
fn single<'a>(settings: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match settings.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("{key}: expected one value, found {other:?}"),
    }
}

/// A systemd size (`512M`: systemd's K, M, G are powers of 1024) in MiB.
fn systemd_mib(size: &str) -> f64 {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let number: f64 = digits.parse().expect("a systemd size");
    number
        * match &size[digits.len()..] {
            "" => 1.0 / 1_048_576.0,
            "K" => 1.0 / 1024.0,
            "M" => 1.0,
            "G" => 1024.0,
            other => panic!("unexpected size unit {other} in {size}"),
        }
}

/// A systemd time span such as `45s`, `2min` or `90`.
fn systemd_span(span: &str) -> Duration {
    let digits = span.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let number: u64 = digits.parse().expect("a systemd time span");
    match &span[digits.len()..] {
        "" | "s" | "sec" => Duration::from_secs(number),
        "min" | "m" => Duration::from_secs(number * 60),
        "ms" | "msec" => Duration::from_millis(number),
        other => panic!("unexpected time unit {other} in {span}"),
    }
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let analyze = systemd_analyze();
    let unit = std::fs::read_to_string(repo_root().join(UNIT)).expect("read the unit");
    let settings = service_settings(&unit);
    let one_of = |key: &str| single(&settings, key).to_owned();
    assert!(
        settings.get("DynamicUser").is_some_and(|v| v == &["yes"]) || settings.contains_key("User"),
        "neither DynamicUser=yes nor a User"
    );
    assert_eq!(one_of("ProtectSystem"), "strict");
    assert_eq!(one_of("StateDirectory"), "autoglm");
    assert_eq!(one_of("KillSignal"), "SIGTERM");
    assert_eq!(one_of("Restart"), "on-failure");
    assert!(
        settings["Environment"]
            .iter()
            .any(|e| e == "AUTOGLM__EVENT_QUEUE__STORAGE_PATH=%S/autoglm/state"),
        "the state is not in the StateDirectory"
    );
    // The stop timeout outlasts the drain of the shipped config.
    let example = autoglm_config::load(&repo_root().join("open-autoglm-config.yaml"))
        .expect("the example config loads");
    let stop = systemd_span(&one_of("TimeoutStopSec"));
    assert!(
        stop > example.shutdown_timeout,
        "TimeoutStopSec {stop:?} is not above shutdown_timeout {:?}",
        example.shutdown_timeout
    );
    let (_, highest) = bench_rss();
    let max = systemd_mib(&one_of("MemoryMax"));
    assert!(
        max >= highest * 1.2,
        "MemoryMax leaves under 20% above the bench's highest peak RSS ({highest:.1} MiB)"
    );

    // verify checks that ExecStart's program exists: a copy runs the built binary.
    let exec = one_of("ExecStart");
    let program = exec.split_whitespace().next().expect("a program");
    let scratch = Scratch::new();
    let copy = scratch.write(
        "autoglm.service",
        unit.replace(program, env!("CARGO_BIN_EXE_autoglm")),
    );
    let verified = output(Command::new(&analyze).arg("verify").arg(&copy));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(
        verified.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {UNIT} ({}):\n{said}",
        verified.status
    );
    // The check can fail: an unknown setting is reported.
    let broken = scratch.write(
        "broken.service",
        unit.replace(program, env!("CARGO_BIN_EXE_autoglm"))
            .replace("KillSignal=", "KillSignall="),
    );
    let verified = output(Command::new(&analyze).arg("verify").arg(&broken));
    assert!(
        String::from_utf8_lossy(&verified.stderr).contains("KillSignall"),
        "systemd-analyze verify missed an unknown setting"
    );

    // The sandbox's exposure score (0 best, 10 worst): at most 1.5.
    let security = output(
        Command::new(&analyze)
            .args(["security", "--offline=yes", "--threshold=15", "--no-pager"])
            .arg(&copy),
    );
    let report = String::from_utf8_lossy(&security.stdout);
    let level = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for autoglm.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(
        security.status.success(),
        "exposure level {level} is above 1.5:\n{report}"
    );
    eprintln!("systemd-analyze security: exposure {level}");
}

// ---------------------------------------------------------------------------------------------
// Prometheus rules and the Grafana dashboard

#[test]
fn alert_rules_check_and_their_unit_tests_pass() {
    let promtool = tool("promtool");
    run(Command::new(&promtool).args(["check", "rules", RULES]));
    run(Command::new(&promtool).args(["test", "rules", RULE_TESTS]));

    // The unit tests catch a broken rule: without its lag condition, AutoglmNoCommit would page
    // for an idle instance.
    let rules = std::fs::read_to_string(repo_root().join(RULES)).expect("read rules");
    let gate = "          and on (job, instance)\n          sum by (job, instance) (autoglm_consumer_lag_records) > 0\n";
    assert!(
        rules.contains(gate),
        "AutoglmNoCommit's lag condition moved"
    );
    let scratch = Scratch::new();
    scratch.write("alerts.yaml", rules.replace(gate, ""));
    let tests = std::fs::read_to_string(repo_root().join(RULE_TESTS)).expect("read rule tests");
    let tests = scratch.write("alerts.test.yaml", tests);
    let failed = run_failing(Command::new(&promtool).args(["test", "rules"]).arg(&tests));
    assert!(failed.contains("AutoglmNoCommit"), "{failed}");
}

/// The dashboard's PromQL queries and template-variable queries.
fn dashboard_queries() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(repo_root().join(DASHBOARD)).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
    }
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a panel title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel id")),
            "panel id repeated at {title}"
        );
        let grid = &panel["gridPos"];
        let right = grid["x"].as_u64().expect("x") + grid["w"].as_u64().expect("w");
        assert!(right <= 24, "{title} is wider than the dashboard");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().expect("an expr");
            assert!(!expr.trim().is_empty(), "{title} has an empty query");
            exprs.push(expr.to_owned());
        }
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["query"]["query"].as_str().map(str::to_owned))
        .collect();
    (exprs, variables)
}

/// A dashboard query as plain PromQL: its Grafana variables replaced.
fn plain(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$job", "autoglm")
        .replace("$instance", ".*")
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let (exprs, _) = dashboard_queries();
    // promtool parses each query as a recording rule's expression.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&plain(expr)).expect("JSON text")
        ));
    }
    let scratch = Scratch::new();
    let file = scratch.write("dashboard-rules.yaml", rules);
    let checked = run(Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&file));
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{checked}"
    );
}

/// The `autoglm_…` names in a query.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("autoglm_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metric families a real `autoglm run` serves on /metrics, by name and type, once it owns
/// partitions and has committed (so that the per-partition lag gauge has a value).
async fn served_metrics() -> BTreeMap<String, String> {
    let stack = stack().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let names = Names {
        source: unique("in-deploy"),
        target: unique("out-deploy"),
        dlq: unique("dlq-deploy"),
        group: unique("g-deploy"),
    };
    let job = Job::with_names(
        &stack,
        names,
        &format!("bootstrap_servers: \"{}\"", stack.bootstrap),
        &format!("metrics: {{ listen: \"127.0.0.1:{port}\" }}\n"),
        "flush_interval_ms: 100",
        500,
        2,
    )
    .await;
    job.produce(&common::updates(7, 200, 50)).await;
    let mut child = job.start_instance(0, 0, 120);
    let deadline = Instant::now() + Duration::from_secs(90);
    let page = loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "autoglm exited early ({status}); see {}",
                job.log(0).display()
            );
        }
        if Instant::now() > deadline {
            let _ = common::terminate(&mut child);
            panic!(
                "no autoglm_consumer_lag_records on /metrics within 90 s; see {}",
                job.log(0).display()
            );
        }
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await
            && let Ok(page) = response.text().await
            && page.contains("\nautoglm_consumer_lag_records{")
        {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let status = common::terminate(&mut child);
    assert!(
        status.success(),
        "SIGTERM did not stop autoglm cleanly ({status}); see {}",
        job.log(0).display()
    );
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_the_metrics_the_processor_serves() {
    let served = served_metrics().await;
    // A histogram is queried by its _bucket, _sum and _count series.
    let exists = |name: &str| {
        served.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| served.get(base).is_some_and(|k| k == "histogram"))
            })
    };
    let base = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| served.get(*base).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name)
            .to_owned()
    };

    let (exprs, variables) = dashboard_queries();
    let mut on_dashboard = BTreeSet::new();
    for expr in exprs.iter().chain(&variables) {
        for name in metric_names(expr) {
            assert!(
                exists(&name),
                "the dashboard queries {name}, which autoglm does not serve: {expr}"
            );
            on_dashboard.insert(base(&name));
        }
    }
    let missing: Vec<&String> = served
        .keys()
        .filter(|name| name.starts_with("autoglm_") && !on_dashboard.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard shows no panel of {missing:?}"
    );

    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join(RULES)).expect("read rules"),
    )
    .expect("rules YAML");
    for group in items(&rules, &["groups"]) {
        for rule in items(group, &["rules"]) {
            let expr = text(rule, &["expr"]);
            for name in metric_names(expr) {
                assert!(
                    exists(&name),
                    "alert {} uses {name}, which autoglm does not serve",
                    text(rule, &["alert"])
                );
            }
        }
    }
}
