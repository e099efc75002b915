//! The Pod Security Standard `restricted` for the pods the operator builds from
//! third-party images (RabbitMQ, Redis): their security contexts, and in tests a check
//! of any pod spec against the profile, applied to every pod template the operator
//! writes, so a namespace enforcing `restricted` admits all of them.

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};

/// The pod security context for an image whose user is `uid`: that user and group,
/// volumes group-owned by it, never root, and the container runtime's seccomp profile.
pub fn pod_context(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// The security context of every container (init containers too): no privilege
/// escalation and no capabilities. The root filesystem stays writable: these images'
/// entrypoints may write next to their binaries, which the profile allows.
pub fn container_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

#[cfg(test)]
pub(crate) use check::violations;

#[cfg(test)]
mod check {
    use k8s_openapi::api::core::v1::{PodSpec, SeccompProfile, SecurityContext, Volume};

    /// Volume types `restricted` allows.
    const ALLOWED_VOLUMES: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];

    fn seccomp_ok(profile: &SeccompProfile) -> bool {
        matches!(profile.type_.as_str(), "RuntimeDefault" | "Localhost")
    }

    fn volume_types(volume: &Volume) -> Vec<String> {
        let value = serde_json::to_value(volume).unwrap_or_default();
        value
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .filter(|k| k != "name")
            .collect()
    }

    /// Every rule of the `restricted` profile (and of `baseline`, which it includes)
    /// that `spec` breaks, one line each; empty when a namespace enforcing it admits the
    /// pod.
    pub(crate) fn violations(spec: &PodSpec) -> Vec<String> {
        let mut out = Vec::new();
        let pod = spec.security_context.clone().unwrap_or_default();
        for (set, what) in [
            (spec.host_network, "hostNetwork"),
            (spec.host_pid, "hostPID"),
            (spec.host_ipc, "hostIPC"),
        ] {
            if set == Some(true) {
                out.push(format!("pod: {what} is set"));
            }
        }
        if pod.run_as_user == Some(0) {
            out.push("pod: runAsUser is 0".to_owned());
        }
        if let Some(profile) = &pod.seccomp_profile
            && !seccomp_ok(profile)
        {
            out.push(format!("pod: seccomp profile {}", profile.type_));
        }

        let containers = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| {
                let host_ports = c
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| p.host_port.is_some_and(|h| h != 0));
                (c.name.clone(), c.security_context.clone(), host_ports)
            })
            .chain(
                spec.ephemeral_containers
                    .iter()
                    .flatten()
                    .map(|c| (c.name.clone(), c.security_context.clone(), false)),
            );
        for (name, context, host_ports) in containers {
            let c: SecurityContext = context.unwrap_or_default();
            let mut fail = |rule: &str| out.push(format!("container {name}: {rule}"));
            if host_ports {
                fail("uses a host port");
            }
            if c.privileged == Some(true) {
                fail("is privileged");
            }
            if c.allow_privilege_escalation != Some(false) {
                fail("allowPrivilegeEscalation is not false");
            }
            let caps = c.capabilities.clone().unwrap_or_default();
            if !caps.drop.iter().flatten().any(|d| d == "ALL") {
                fail("does not drop ALL capabilities");
            }
            for added in caps.add.iter().flatten() {
                if added != "NET_BIND_SERVICE" {
                    fail(&format!("adds capability {added}"));
                }
            }
            match c.run_as_non_root {
                Some(false) => fail("runAsNonRoot is false"),
                None if pod.run_as_non_root != Some(true) => {
                    fail("runAsNonRoot is set neither on it nor on the pod");
                }
                _ => {}
            }
            if c.run_as_user == Some(0) {
                fail("runAsUser is 0");
            }
            match c.seccomp_profile.as_ref().or(pod.seccomp_profile.as_ref()) {
                Some(profile) if seccomp_ok(profile) => {}
                Some(profile) => fail(&format!("seccomp profile {}", profile.type_)),
                None => fail("has no seccomp profile, nor has the pod"),
            }
        }

        for volume in spec.volumes.iter().flatten() {
            for kind in volume_types(volume) {
                if !ALLOWED_VOLUMES.contains(&kind.as_str()) {
                    out.push(format!("volume {}: type {kind}", volume.name));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, HostPathVolumeSource, PodSpec, SeccompProfile, Volume,
    };
    use serde_json::json;

    use super::*;
    use crate::crd::SecretKeyRef;
    use crate::finservice::fixtures::{finservice, settings};

    fn restricted_pod() -> PodSpec {
        PodSpec {
            security_context: Some(pod_context(999)),
            init_containers: Some(vec![Container {
                name: "init".into(),
                security_context: Some(container_context()),
                ..Container::default()
            }]),
            containers: vec![Container {
                name: "main".into(),
                security_context: Some(container_context()),
                ..Container::default()
            }],
            volumes: Some(vec![
                serde_json::from_value(json!({"name": "c", "configMap": {"name": "x"}})).unwrap(),
                serde_json::from_value(json!({"name": "e", "emptyDir": {}})).unwrap(),
            ]),
            ..PodSpec::default()
        }
    }

    #[test]
    fn the_operator_contexts_make_a_restricted_pod() {
        assert_eq!(violations(&restricted_pod()), Vec::<String>::new());
    }

    #[test]
    fn the_check_names_every_rule_a_pod_breaks() {
        let mut pod = restricted_pod();
        pod.host_network = Some(true);
        let context = pod.security_context.as_mut().unwrap();
        context.run_as_non_root = None;
        context.seccomp_profile = None;
        let init = &mut pod.init_containers.as_mut().unwrap()[0];
        let c = init.security_context.as_mut().unwrap();
        c.allow_privilege_escalation = None;
        c.capabilities.as_mut().unwrap().add = Some(vec!["NET_ADMIN".into()]);
        let main = &mut pod.containers[0];
        main.ports = Some(vec![ContainerPort {
            container_port: 80,
            host_port: Some(80),
            ..ContainerPort::default()
        }]);
        let c = main.security_context.as_mut().unwrap();
        c.privileged = Some(true);
        c.capabilities = None;
        c.run_as_non_root = Some(true);
        c.seccomp_profile = Some(SeccompProfile {
            type_: "Unconfined".into(),
            localhost_profile: None,
        });
        pod.volumes.as_mut().unwrap().push(Volume {
            name: "host".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/var/run".into(),
                type_: None,
            }),
            ..Volume::default()
        });
        assert_eq!(
            violations(&pod),
            [
                "pod: hostNetwork is set",
                "container init: allowPrivilegeEscalation is not false",
                "container init: adds capability NET_ADMIN",
                "container init: runAsNonRoot is set neither on it nor on the pod",
                "container init: has no seccomp profile, nor has the pod",
                "container main: uses a host port",
                "container main: is privileged",
                "container main: does not drop ALL capabilities",
                "container main: seccomp profile Unconfined",
                "volume host: type hostPath",
            ]
        );
    }

    #[test]
    fn net_bind_service_is_the_one_capability_a_container_may_add() {
        let mut pod = restricted_pod();
        pod.containers[0]
            .security_context
            .as_mut()
            .unwrap()
            .capabilities
            .as_mut()
            .unwrap()
            .add = Some(vec!["NET_BIND_SERVICE".into()]);
        assert!(violations(&pod).is_empty());
    }

    #[test]
    fn root_is_refused_at_either_level() {
        let mut pod = restricted_pod();
        pod.security_context.as_mut().unwrap().run_as_user = Some(0);
        pod.containers[0]
            .security_context
            .as_mut()
            .unwrap()
            .run_as_non_root = Some(false);
        assert_eq!(
            violations(&pod),
            [
                "pod: runAsUser is 0",
                "container main: runAsNonRoot is false"
            ]
        );
    }

    /// FinService pods are built in `finservice.rs`; checked here with every option
    /// that adds a container or a volume.
    #[test]
    fn finservice_pods_pass_the_restricted_profile_with_either_kind_of_sidecar() {
        let mut fs = finservice("payment", &[]);
        fs.spec.sidecar.hs256_secret_ref = Some(SecretKeyRef {
            name: "jwt".into(),
            key: "secret".into(),
        });
        fs.spec.secret_mounts =
            serde_json::from_value(json!([{"secretName": "tls", "mountPath": "/etc/tls"}]))
                .unwrap();
        for native in [true, false] {
            let settings = crate::finservice::Settings {
                native_sidecars: native,
                ..settings()
            };
            for deployment in crate::finservice::desired(&fs, &settings, true).deployments {
                let template = deployment.spec.unwrap().template.spec.unwrap();
                assert_eq!(
                    violations(&template),
                    Vec::<String>::new(),
                    "native sidecars: {native}"
                );
            }
        }
    }
}
