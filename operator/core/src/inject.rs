//! Sidecar injection: one pure function from a pod spec and sidecar settings to the
//! pod spec with the FinFlow sidecar in front of the app.
//!
//! The FinService reconciler runs it on the pod templates it builds; the admission
//! webhook runs it on pods annotated `finflow.dev/inject: "true"`. What it does:
//!
//! - The app container is the one with the container port named `http` (else the first
//!   container with a port). Its public port `P` moves to the sidecar, which takes the
//!   port name `http` and listens on `0.0.0.0:P`; the app gets
//!   `LISTEN_ADDR=127.0.0.1:<app port>` and the sidecar `UPSTREAM=http://127.0.0.1:<app
//!   port>`. So the app is reachable only through the sidecar (`docs/architecture.md`, Sidecar and gateway).
//! - Probes of the app that named the port `http` now use the number `P`: the name no
//!   longer resolves inside the app container, and probing through the sidecar checks
//!   the whole path a request takes.
//! - With native sidecars (Kubernetes 1.29 and later) the sidecar is the first init
//!   container with `restartPolicy: Always` and a startup probe on its `/live`, so the
//!   app starts once the sidecar serves, and stops before it; otherwise it is the first
//!   regular container, with a `postStart` hook ([`WAIT_LIVE_COMMAND`]) that returns
//!   once the sidecar answers `/live`. The kubelet
//!   starts regular containers in order and does not start the next one until the
//!   previous one's `postStart` hook has returned, so the app is held until its sidecar
//!   serves (the mechanism of Istio's `holdApplicationUntilProxyStarts`).
//! - A pod that already has the sidecar is returned unchanged, so injecting twice is
//!   the same as injecting once.

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    ExecAction, Lifecycle, LifecycleHandler, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::SecretKeyRef;

/// Name of the injected container; its presence marks a pod as injected.
pub const SIDECAR_NAME: &str = "finflow-sidecar";
/// Pod annotation asking the webhook for injection (value `"true"`).
pub const INJECT_ANNOTATION: &str = "finflow.dev/inject";
/// Pod annotation naming the ConfigMap with the sidecar's `sidecar.json`.
pub const CONFIG_ANNOTATION: &str = "finflow.dev/sidecar-config";
/// Pod annotation overriding the app's loopback port.
pub const APP_PORT_ANNOTATION: &str = "finflow.dev/app-port";
/// The public container port's name, owned by the sidecar after injection.
pub const HTTP_PORT: &str = "http";
/// Key of the sidecar configuration inside its ConfigMap.
pub const CONFIG_FILE: &str = finflow_contracts::sidecar::FILE_NAME;
/// Key of the sidecar ConfigMap (and file next to [`CONFIG_FILE`]) holding the token
/// issuer's epoch: its live version and color. The sidecar refetches the JWK set when
/// it changes, so a promotion or rollback of the auth service reaches every sidecar.
pub const EPOCH_FILE: &str = "jwks-epoch";
/// The sidecar's admin port (`/live`, `/ready`, `/metrics`), out of the app's way.
pub const SIDECAR_ADMIN_PORT: i32 = 15020;
/// The sidecar's `postStart` hook without native sidecars: its own binary (where
/// docker/Dockerfile installs it) polls its admin `/live` until it answers and exits 0,
/// or gives up with exit 1 after about a minute.
pub const WAIT_LIVE_COMMAND: [&str; 2] = ["/usr/local/bin/app", "--wait-live"];
const CONFIG_VOLUME: &str = "finflow-sidecar-config";
const CONFIG_DIR: &str = "/etc/finflow/sidecar";

/// What to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarSettings {
    pub image: String,
    /// Loopback port of the app; [`default_app_port`] of the public port when unset.
    pub app_port: Option<i32>,
    /// ConfigMap holding [`CONFIG_FILE`], mounted read-only.
    pub config_map: Option<String>,
    /// Secret key with a shared HS256 secret, given as `JWT_HS256_SECRET`.
    pub hs256_secret: Option<SecretKeyRef>,
    /// Use a native sidecar (init container with `restartPolicy: Always`).
    pub native: bool,
}

/// The app's loopback port when none is given: 1000 above the public port (as in the
/// local layout, 8001 -> 9001), or 1000 below when that would leave the port range.
pub fn default_app_port(public: i32) -> i32 {
    if public + 1000 <= 65535 {
        public + 1000
    } else {
        public - 1000
    }
}

/// Whether the pod already carries the sidecar.
pub fn is_injected(pod: &PodSpec) -> bool {
    pod.containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_NAME)
}

/// The app container (index) and its public port: the container port named `http`,
/// else the first container port of the first container that has one.
pub fn app_container(pod: &PodSpec) -> Option<(usize, i32)> {
    let ports = |c: &Container| c.ports.clone().unwrap_or_default();
    pod.containers
        .iter()
        .enumerate()
        .find_map(|(i, c)| {
            ports(c)
                .iter()
                .find(|p| p.name.as_deref() == Some(HTTP_PORT))
                .map(|p| (i, p.container_port))
        })
        .or_else(|| {
            pod.containers
                .iter()
                .enumerate()
                .find_map(|(i, c)| ports(c).first().map(|p| (i, p.container_port)))
        })
}

/// `pod` with the sidecar in front of its app. Unchanged when already injected or when
/// no container declares a port (there is nothing to put the sidecar in front of).
pub fn inject(pod: &PodSpec, settings: &SidecarSettings) -> PodSpec {
    let mut pod = pod.clone();
    if is_injected(&pod) {
        return pod;
    }
    let Some((index, public)) = app_container(&pod) else {
        return pod;
    };
    let app_port = settings
        .app_port
        .unwrap_or_else(|| default_app_port(public));

    let app = &mut pod.containers[index];
    if let Some(ports) = app.ports.as_mut() {
        ports.retain(|p| p.container_port != public && p.name.as_deref() != Some(HTTP_PORT));
        if ports.is_empty() {
            app.ports = None;
        }
    }
    set_env(app, "LISTEN_ADDR", &format!("127.0.0.1:{app_port}"));
    for probe in [
        app.readiness_probe.as_mut(),
        app.liveness_probe.as_mut(),
        app.startup_probe.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        retarget_probe(probe, public);
    }

    let mut sidecar = sidecar_container(settings, public, app_port);
    // A pod may set its seccomp profile per container, which the restricted standard
    // allows; the sidecar must then carry its own, or the API server refuses the pod.
    // A pod-level profile already covers it (and FinService pods keep their template).
    if pod
        .security_context
        .as_ref()
        .is_none_or(|s| s.seccomp_profile.is_none())
        && let Some(context) = sidecar.security_context.as_mut()
    {
        context.seccomp_profile = Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        });
    }
    if settings.native {
        pod.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, sidecar);
    } else {
        pod.containers.insert(0, sidecar);
    }
    if let Some(name) = &settings.config_map {
        let volumes = pod.volumes.get_or_insert_with(Vec::new);
        if !volumes.iter().any(|v| v.name == CONFIG_VOLUME) {
            volumes.push(Volume {
                name: CONFIG_VOLUME.to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: name.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
    }
    pod
}

/// Replaces every `name` entry (a user's copy included) with one `name=value`.
fn set_env(container: &mut Container, name: &str, value: &str) {
    let env = container.env.get_or_insert_with(Vec::new);
    env.retain(|e| e.name != name);
    env.push(EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    });
}

fn retarget_probe(probe: &mut Probe, public: i32) {
    let named_http = |port: &IntOrString| matches!(port, IntOrString::String(s) if s == HTTP_PORT);
    if let Some(get) = probe.http_get.as_mut()
        && named_http(&get.port)
    {
        get.port = IntOrString::Int(public);
    }
    if let Some(tcp) = probe.tcp_socket.as_mut()
        && named_http(&tcp.port)
    {
        tcp.port = IntOrString::Int(public);
    }
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        value_from: None,
    }
}

fn sidecar_container(settings: &SidecarSettings, public: i32, app_port: i32) -> Container {
    let mut env_vars = vec![
        env("LISTEN_ADDR", format!("0.0.0.0:{public}")),
        env("UPSTREAM", format!("http://127.0.0.1:{app_port}")),
        env("ADMIN_ADDR", format!("0.0.0.0:{SIDECAR_ADMIN_PORT}")),
    ];
    let mut mounts = Vec::new();
    if settings.config_map.is_some() {
        env_vars.push(env("SIDECAR_CONFIG", format!("{CONFIG_DIR}/{CONFIG_FILE}")));
        env_vars.push(env("JWKS_EPOCH_FILE", format!("{CONFIG_DIR}/{EPOCH_FILE}")));
        mounts.push(VolumeMount {
            name: CONFIG_VOLUME.to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if let Some(secret) = &settings.hs256_secret {
        env_vars.push(EnvVar {
            name: "JWT_HS256_SECRET".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
        });
    }
    let quantity = |q: &str| Quantity(q.to_owned());
    Container {
        name: SIDECAR_NAME.to_owned(),
        image: Some(settings.image.clone()),
        ports: Some(vec![ContainerPort {
            name: Some(HTTP_PORT.to_owned()),
            container_port: public,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        env: Some(env_vars),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        // Native sidecars are init containers; this is what keeps them running.
        restart_policy: settings.native.then(|| "Always".to_owned()),
        // As a regular container nothing else orders it before the app: the kubelet
        // starts the next container (the app) only once this hook has returned, so the
        // app is held until the sidecar serves. A native sidecar gets no hook: as an
        // init container it is already started before the app.
        lifecycle: (!settings.native).then(wait_until_live),
        // A native sidecar counts as started, and the app is started after it, only once
        // its startup probe passes: the sidecar then serves. (`/live`, not `/ready`:
        // ready needs the app, which is not started yet.)
        startup_probe: settings.native.then(|| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some("/live".to_owned()),
                port: IntOrString::Int(SIDECAR_ADMIN_PORT),
                ..Default::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(60),
            ..Probe::default()
        }),
        // The admin port's /ready: keys loaded and the app answering.
        readiness_probe: Some(Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some("/ready".to_owned()),
                port: IntOrString::Int(SIDECAR_ADMIN_PORT),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_owned(), quantity("10m")),
                    ("memory".to_owned(), quantity("32Mi")),
                ]
                .into(),
            ),
            limits: Some([("memory".to_owned(), quantity("128Mi"))].into()),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted()),
        ..Container::default()
    }
}

/// A `postStart` hook running [`WAIT_LIVE_COMMAND`].
fn wait_until_live() -> Lifecycle {
    Lifecycle {
        post_start: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(Vec::from(WAIT_LIVE_COMMAND.map(str::to_owned))),
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

/// The container security context of the sidecar and of every app: non-root, no
/// privilege escalation, no capabilities, nothing written to the image's filesystem
/// (Kubernetes' "restricted" pod security standard).
pub fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finservice::fixtures::{container, env_named};
    use k8s_openapi::api::core::v1::HTTPGetAction;

    fn app_pod() -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("wallet:1.0.0".into()),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 8002,
                    ..ContainerPort::default()
                }]),
                env: Some(vec![env("LISTEN_ADDR", "0.0.0.0:8002".into())]),
                readiness_probe: Some(Probe {
                    http_get: Some(HTTPGetAction {
                        path: Some("/ready".into()),
                        port: IntOrString::String("http".into()),
                        ..HTTPGetAction::default()
                    }),
                    ..Probe::default()
                }),
                ..Container::default()
            }],
            ..PodSpec::default()
        }
    }

    fn settings(native: bool) -> SidecarSettings {
        SidecarSettings {
            image: "finflow/sidecar:1".into(),
            app_port: None,
            config_map: Some("wallet-sidecar".into()),
            hs256_secret: None,
            native,
        }
    }

    fn env_of<'a>(c: &'a Container, name: &str) -> Vec<&'a str> {
        env_named(c, name)
            .into_iter()
            .filter_map(|e| e.value.as_deref())
            .collect()
    }

    fn app(pod: &PodSpec) -> &Container {
        container(pod, "app")
    }

    #[test]
    fn the_app_port_moves_behind_the_sidecar() {
        let pod = inject(&app_pod(), &settings(true));
        let sidecar = &pod.init_containers.as_ref().unwrap()[0];
        let port = &sidecar.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 8002)
        );
        assert_eq!(env_of(sidecar, "UPSTREAM"), ["http://127.0.0.1:9002"]);
        assert_eq!(env_of(sidecar, "LISTEN_ADDR"), ["0.0.0.0:8002"]);
        assert_eq!(env_of(app(&pod), "LISTEN_ADDR"), ["127.0.0.1:9002"]);
        assert!(
            app(&pod).ports.is_none(),
            "the app no longer declares the public port"
        );
    }

    #[test]
    fn app_probes_go_through_the_public_port() {
        let pod = inject(&app_pod(), &settings(true));
        let get = app(&pod)
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(get.port, IntOrString::Int(8002));
    }

    #[test]
    fn the_sidecar_brings_its_own_seccomp_profile_unless_the_pod_sets_one() {
        let profile = |pod: &PodSpec| {
            pod.init_containers.as_ref().unwrap()[0]
                .security_context
                .as_ref()
                .unwrap()
                .seccomp_profile
                .as_ref()
                .map(|p| p.type_.clone())
        };
        // The restricted standard asks every container for a profile, which a pod may
        // give per container: the sidecar must then say its own.
        let per_container = inject(&app_pod(), &settings(true));
        assert_eq!(profile(&per_container).as_deref(), Some("RuntimeDefault"));
        let mut pod_level = app_pod();
        pod_level.security_context = Some(k8s_openapi::api::core::v1::PodSecurityContext {
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..Default::default()
        });
        assert_eq!(profile(&inject(&pod_level, &settings(true))), None);
    }

    /// The command of a container's `postStart` exec hook, if it has one.
    fn post_start(c: &Container) -> Option<&[String]> {
        c.lifecycle
            .as_ref()?
            .post_start
            .as_ref()?
            .exec
            .as_ref()?
            .command
            .as_deref()
    }

    #[test]
    fn a_native_sidecar_is_the_first_init_container_and_always_restarts() {
        let pod = inject(&app_pod(), &settings(true));
        let init = pod.init_containers.as_ref().unwrap();
        assert_eq!(init[0].name, SIDECAR_NAME);
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
        assert_eq!(pod.containers.len(), 1);
        assert!(
            init[0].lifecycle.is_none(),
            "a native sidecar starts before the app without a hook"
        );
        // The kubelet starts the app once the sidecar's startup probe passes.
        let startup = init[0].startup_probe.as_ref().expect("a startup probe");
        let get = startup.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/live"));
        assert_eq!(get.port, IntOrString::Int(SIDECAR_ADMIN_PORT));
    }

    #[test]
    fn without_native_sidecars_the_sidecar_is_the_first_container() {
        let pod = inject(&app_pod(), &settings(false));
        assert_eq!(pod.containers[0].name, SIDECAR_NAME);
        assert_eq!(pod.containers[0].restart_policy, None);
        assert_eq!(pod.containers[1].name, "app");
        assert!(pod.init_containers.is_none());
    }

    #[test]
    fn without_native_sidecars_the_app_waits_for_the_sidecar_to_be_live() {
        let pod = inject(&app_pod(), &settings(false));
        let sidecar = &pod.containers[0];
        assert_eq!(
            post_start(sidecar).expect("the sidecar has a postStart exec hook"),
            ["/usr/local/bin/app", "--wait-live"]
        );
        let hook = sidecar.lifecycle.as_ref().unwrap();
        assert!(hook.pre_stop.is_none());
        let post_start_hook = hook.post_start.as_ref().unwrap();
        assert!(post_start_hook.http_get.is_none() && post_start_hook.tcp_socket.is_none());
        assert!(app(&pod).lifecycle.is_none(), "the app itself has no hook");
        assert!(
            sidecar.startup_probe.is_none(),
            "a regular container's startup probe would not hold the app"
        );
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        for native in [true, false] {
            let once = inject(&app_pod(), &settings(native));
            assert_eq!(inject(&once, &settings(native)), once);
            // Even with other settings: the first injection stands.
            assert_eq!(inject(&once, &settings(!native)), once);
        }
    }

    #[test]
    fn the_config_map_is_mounted_and_named_in_the_environment() {
        let pod = inject(&app_pod(), &settings(true));
        let volume = &pod.volumes.as_ref().unwrap()[0];
        assert_eq!(volume.config_map.as_ref().unwrap().name, "wallet-sidecar");
        let sidecar = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(
            env_of(sidecar, "SIDECAR_CONFIG"),
            ["/etc/finflow/sidecar/sidecar.json"]
        );
    }

    #[test]
    fn an_explicit_app_port_and_an_hs256_secret_are_used() {
        let mut s = settings(false);
        s.app_port = Some(7000);
        s.hs256_secret = Some(SecretKeyRef {
            name: "jwt".into(),
            key: "secret".into(),
        });
        let pod = inject(&app_pod(), &s);
        assert_eq!(env_of(app(&pod), "LISTEN_ADDR"), ["127.0.0.1:7000"]);
        let secret_env = env_named(&pod.containers[0], "JWT_HS256_SECRET")[0];
        let selector = secret_env
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (selector.name.as_str(), selector.key.as_str()),
            ("jwt", "secret")
        );
    }

    #[test]
    fn a_pod_without_ports_is_left_alone() {
        let mut pod = app_pod();
        pod.containers[0].ports = None;
        assert_eq!(inject(&pod, &settings(true)), pod);
    }

    fn arbitrary_pod() -> impl proptest::strategy::Strategy<Value = PodSpec> {
        use proptest::prelude::*;
        let container = (any::<bool>(), 1_i32..65535, any::<bool>()).prop_map(
            |(named_http, port, has_port)| Container {
                name: format!("c{port}"),
                ports: has_port.then(|| {
                    vec![ContainerPort {
                        name: named_http.then(|| HTTP_PORT.to_owned()),
                        container_port: port,
                        ..ContainerPort::default()
                    }]
                }),
                ..Container::default()
            },
        );
        proptest::collection::vec(container, 1..4).prop_map(|containers| PodSpec {
            containers,
            ..PodSpec::default()
        })
    }

    proptest::proptest! {
        #[test]
        fn injection_is_idempotent_and_adds_one_sidecar_at_most(
            pod in arbitrary_pod(),
            native in proptest::prelude::any::<bool>(),
        ) {
            let once = inject(&pod, &settings(native));
            proptest::prop_assert_eq!(&inject(&once, &settings(native)), &once);
            let sidecars = once
                .containers
                .iter()
                .chain(once.init_containers.iter().flatten())
                .filter(|c| c.name == SIDECAR_NAME)
                .count();
            proptest::prop_assert_eq!(sidecars, usize::from(app_container(&pod).is_some()));
        }
    }

    #[test]
    fn the_app_port_default_stays_in_range() {
        assert_eq!(default_app_port(8001), 9001);
        assert_eq!(default_app_port(65000), 64000);
    }
}
