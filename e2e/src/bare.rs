//! A bare API server (etcd and kube-apiserver, no kubelet, no controller manager) made
//! to look like a cluster, so the operator's cluster tests run against the real API
//! server these machines can run.
//!
//! [`Stand`] plays the parts that are missing, in the test's namespace:
//! - the Deployment and StatefulSet controllers and the kubelet: a Pod object for each
//!   replica of the current template, with a `status.podIP` and a Ready condition, and
//!   the workload's status counting them; a pod whose image tag contains
//!   [`NEVER_READY`] stays unready, as one whose image cannot be pulled;
//! - the Job controller: a Job completes;
//! - the EndpointSlice and Endpoints controllers: the Ready pods a Service selects;
//! - the apps in those pods: an HTTP server at every pod address, inside a network
//!   namespace the stand creates (the API server's service proxy refuses loopback
//!   addresses and proxies only to addresses of existing Pods), answering every path
//!   with 200, or with the code [`Stand::set_health`] gave that service and version; a
//!   200 carries the `schema` [`Stand::set_schema`] gave them, as the platform's
//!   `/health` reports it.
//!
//! Needs root (network namespaces) and `ip` from iproute2.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use finflow_operator::analysis::{self, Traffic};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, PodTemplateSpec, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Field manager of everything the stand writes.
const MANAGER: &str = "finflow-e2e-stand";
/// Label tying a pod to the workload the stand made it for.
const OWNER: &str = "finflow-e2e.dev/owner";
/// An image tag containing this never becomes ready.
pub const NEVER_READY: &str = "missing";
/// Where a pod's sidecar serves its metrics (`inject::SIDECAR_ADMIN_PORT`, a port).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
const SIDECAR_ADMIN_PORT: u16 = finflow_operator::inject::SIDECAR_ADMIN_PORT as u16;

/// Whether the cluster is a bare API server: no Node objects.
pub async fn is_bare(client: &Client) -> bool {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .list(&ListParams::default().limit(1))
        .await
        .map(|l| l.items.is_empty())
        .unwrap_or(false)
}

/// The app behaviour of each pod address, and what the tests set.
#[derive(Default)]
struct Apps {
    /// Pod address -> (FinService instance, version).
    pods: HashMap<IpAddr, (String, String)>,
    /// (instance, version) -> status code of every answer.
    health: HashMap<(String, String), u16>,
    /// (instance, version) -> the `schema` of its answers' JSON body.
    schemas: HashMap<(String, String), serde_json::Value>,
    /// (instance, version) -> what its pods' sidecars expose at the admin port's
    /// `/metrics`; without an entry they answer 404 there.
    metrics: HashMap<(String, String), String>,
    /// Ports listened on inside the network namespace.
    ports: HashSet<u16>,
}

/// The stand-in for the kubelet and the built-in controllers of one namespace.
pub struct Stand {
    apps: Arc<Mutex<Apps>>,
    stop: watch::Sender<bool>,
    net: Arc<NetNs>,
}

impl Stand {
    /// Starts playing the missing parts for `namespace`.
    pub async fn start(client: &Client, namespace: &str) -> anyhow::Result<Self> {
        let net = Arc::new(NetNs::create()?);
        let apps = Arc::new(Mutex::new(Apps::default()));
        let (stop, mut stopped) = watch::channel(false);
        let world = World {
            client: client.clone(),
            ns: namespace.to_owned(),
            net: net.clone(),
            apps: apps.clone(),
        };
        // Each pod's sidecar admin port, where the operator reads their metrics.
        world.ensure_listening(SIDECAR_ADMIN_PORT)?;
        tokio::spawn(async move {
            loop {
                if let Err(e) = world.pass().await {
                    eprintln!("stand: {e:#}");
                }
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
        });
        Ok(Self { apps, stop, net })
    }

    /// Makes every answer of `instance`'s pods at `version` carry `code` (200: healthy
    /// again).
    pub fn set_health(&self, instance: &str, version: &str, code: u16) {
        self.apps
            .lock()
            .unwrap()
            .health
            .insert((instance.to_owned(), version.to_owned()), code);
    }

    /// Makes the answers of `instance`'s pods at `version` a JSON `/health` body with
    /// `schema` (`{"version": .., "incompatible": [..]}`).
    pub fn set_schema(&self, instance: &str, version: &str, schema: serde_json::Value) {
        self.apps
            .lock()
            .unwrap()
            .schemas
            .insert((instance.to_owned(), version.to_owned()), schema);
    }

    /// Makes the sidecars of `instance`'s pods at `version` report `traffic` at their
    /// admin port's `/metrics`.
    pub fn set_traffic(&self, instance: &str, version: &str, traffic: &Traffic) {
        self.apps.lock().unwrap().metrics.insert(
            (instance.to_owned(), version.to_owned()),
            analysis::exposition(traffic),
        );
    }

    /// The network namespace's name (for `ip netns exec` while debugging).
    pub fn netns(&self) -> &str {
        &self.net.name
    }

    pub fn stop(self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A network namespace joined to this one by a veth pair, with a /24 of pod addresses
/// on its end.
struct NetNs {
    name: String,
    /// Its end of the veth pair.
    guest: String,
    subnet: [u8; 3],
    next: AtomicU32,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

static STANDS: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    fn create() -> anyhow::Result<Self> {
        // A subnet of 10/8 per process and stand, so tests running at once never share
        // addresses.
        let n = STANDS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let subnet = [10, 100 + (pid % 100) as u8, (n % 250) as u8 + 1];
        let name = format!("ffe-{pid}-{n}");
        let (host, guest) = (format!("ffh{pid}x{n}"), format!("ffg{pid}x{n}"));
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", &guest, "netns", &name,
        ])?;
        let [a, b, c] = subnet;
        ip(&["addr", "add", &format!("{a}.{b}.{c}.1/24"), "dev", &host])?;
        ip(&["link", "set", &host, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&["-n", &name, "link", "set", &guest, "up"])?;
        ip(&["-n", &name, "route", "add", "default", "dev", &guest])?;
        Ok(Self {
            name,
            guest,
            subnet,
            next: AtomicU32::new(10),
        })
    }

    /// A new pod address, on the namespace's end of the veth.
    fn allocate(&self) -> anyhow::Result<Ipv4Addr> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n > 254 {
            bail!("the stand's /24 is out of pod addresses");
        }
        let [a, b, c] = self.subnet;
        let addr = Ipv4Addr::new(a, b, c, n as u8);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            &self.guest,
        ])?;
        Ok(addr)
    }

    /// A listener on every address of the namespace at `port`, made from a thread
    /// that joined the namespace (a socket stays in the namespace it was made in).
    fn listen(&self, port: u16) -> anyhow::Result<std::net::TcpListener> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<std::net::TcpListener> {
                let file = std::fs::File::open(&path).with_context(|| path.clone())?;
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("joining the stand's network namespace")?;
                let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the listening thread panicked"))?
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth, and with it ours.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Serves the apps on one port: every answer is the code set for the pod's service
/// and version, 200 by default.
async fn serve(listener: tokio::net::TcpListener, apps: Arc<Mutex<Apps>>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let apps = apps.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut read = 0;
            while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buf.len() {
                match conn.read(&mut buf[read..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read += n,
                }
            }
            let local = conn.local_addr().ok();
            let path = std::str::from_utf8(&buf[..read])
                .ok()
                .and_then(|head| head.split_whitespace().nth(1))
                .unwrap_or("/")
                .to_owned();
            let (code, body) = {
                let apps = apps.lock().unwrap();
                match local.and_then(|a| apps.pods.get(&a.ip()).map(|key| (a.port(), key))) {
                    Some((SIDECAR_ADMIN_PORT, key)) => match apps.metrics.get(key) {
                        Some(text) if path == "/metrics" => (200, text.clone()),
                        _ => (404, "no sidecar metrics here\n".to_owned()),
                    },
                    Some((_, key)) => {
                        let code = apps.health.get(key).copied().unwrap_or(200);
                        match apps.schemas.get(key) {
                            Some(schema) if code == 200 => (
                                code,
                                json!({"service": key.0, "status": "up", "schema": schema})
                                    .to_string(),
                            ),
                            _ => (code, format!("{} {}\n", key.0, key.1)),
                        }
                    }
                    None => (404, "no pod at this address\n".to_owned()),
                }
            };
            let reply = format!(
                "HTTP/1.1 {code} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        });
    }
}

struct World {
    client: Client,
    ns: String,
    net: Arc<NetNs>,
    apps: Arc<Mutex<Apps>>,
}

/// A short hash of a pod template: a new template means new pods.
fn template_hash(template: &PodTemplateSpec) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    serde_json::to_string(template)
        .unwrap_or_default()
        .hash(&mut h);
    format!("{:010x}", h.finish() & 0xff_ffff_ffff)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn never_ready(template: &PodTemplateSpec) -> bool {
    template.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| {
            c.image
                .as_deref()
                .and_then(|i| i.rsplit_once(':'))
                .is_some_and(|(_, tag)| tag.contains(NEVER_READY))
        })
    })
}

impl World {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn pass(&self) -> anyhow::Result<()> {
        // Nothing to play before the namespace exists.
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        if namespaces.get_opt(&self.ns).await?.is_none() {
            return Ok(());
        }
        // The ServiceAccount controller's part: pods without one of their own run as
        // `default`, and the API server refuses a pod whose ServiceAccount is missing.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = self.api();
        if accounts.get_opt("default").await?.is_none() {
            let sa = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
            if let Err(e) = accounts.create(&PostParams::default(), &sa).await
                && !matches!(&e, kube::Error::Api(s) if s.code == 409)
            {
                return Err(e.into());
            }
        }
        let lp = ListParams::default();
        let deployments: Api<Deployment> = self.api();
        for d in deployments.list(&lp).await?.items {
            let spec = d.spec.clone().unwrap_or_default();
            let replicas = spec.replicas.unwrap_or(1);
            // One workload's pods failing (say, its ServiceAccount not made yet) must
            // not hold up the others.
            let (total, updated, ready) = match self
                .pods_for(&d.name_any(), &spec.template, &[], replicas)
                .await
            {
                Ok(counts) => counts,
                Err(e) => {
                    eprintln!("stand: pods of {}: {e:#}", d.name_any());
                    continue;
                }
            };
            let status = json!({"status": {
                "observedGeneration": d.metadata.generation,
                "replicas": total, "updatedReplicas": updated,
                "readyReplicas": ready, "availableReplicas": ready,
                "unavailableReplicas": (replicas - ready).max(0),
                "conditions": [{"type": "Available", "status": if ready >= replicas { "True" } else { "False" },
                    "reason": "FinflowStand", "message": "played by the e2e stand"}],
            }});
            deployments
                .patch_status(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(status),
                )
                .await?;
        }
        let sets: Api<StatefulSet> = self.api();
        for s in sets.list(&lp).await?.items {
            let spec = s.spec.clone().unwrap_or_default();
            let claims: Vec<String> = spec
                .volume_claim_templates
                .iter()
                .flatten()
                .filter_map(|c| c.metadata.name.clone())
                .collect();
            let replicas = spec.replicas.unwrap_or(1);
            // One workload's pods failing (say, its ServiceAccount not made yet) must
            // not hold up the others.
            let (total, updated, ready) = match self
                .pods_for(&s.name_any(), &spec.template, &claims, replicas)
                .await
            {
                Ok(counts) => counts,
                Err(e) => {
                    eprintln!("stand: pods of {}: {e:#}", s.name_any());
                    continue;
                }
            };
            let revision = format!("{}-{}", s.name_any(), template_hash(&spec.template));
            let status = json!({"status": {
                "observedGeneration": s.metadata.generation,
                "replicas": total, "updatedReplicas": updated, "currentReplicas": updated,
                "readyReplicas": ready, "availableReplicas": ready,
                "currentRevision": revision, "updateRevision": revision,
            }});
            sets.patch_status(
                &s.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await?;
        }
        let jobs: Api<Job> = self.api();
        for j in jobs.list(&lp).await?.items {
            if j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0 {
                continue;
            }
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let status = json!({"status": {
                "startTime": now, "completionTime": now, "succeeded": 1, "active": 0,
                "ready": 0, "terminating": 0,
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "played by the e2e stand", "lastTransitionTime": now, "lastProbeTime": now},
                    {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "played by the e2e stand", "lastTransitionTime": now, "lastProbeTime": now},
                ],
            }});
            jobs.patch_status(
                &j.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await?;
        }
        self.endpoints().await
    }

    /// Makes the pods of a workload match `replicas` of its current template: new
    /// pods for a new template, the old ones deleted; a StatefulSet's pods get a volume
    /// for each of its `claims` (templates), as its controller adds them. Returns (pods,
    /// of the current template, ready).
    async fn pods_for(
        &self,
        owner: &str,
        template: &PodTemplateSpec,
        claims: &[String],
        replicas: i32,
    ) -> anyhow::Result<(i32, i32, i32)> {
        let pods: Api<Pod> = self.api();
        let hash = template_hash(template);
        let existing = pods
            .list(&ListParams::default().labels(&format!("{OWNER}={owner}")))
            .await?
            .items;
        let mut current = Vec::new();
        for pod in existing {
            let same = pod.labels().get("pod-template-hash") == Some(&hash);
            let index: i32 = pod
                .name_any()
                .rsplit('-')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(i32::MAX);
            // A pod an earlier stand made has an address nothing serves any more.
            let foreign = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                .is_some_and(|ip| ip.octets()[..3] != self.net.subnet);
            if same && index < replicas && !foreign {
                current.push(pod);
            } else {
                self.forget(&pod);
                let _ = pods
                    .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                    .await;
            }
        }
        for i in 0..replicas {
            let name = format!("{owner}-{hash}-{i}");
            if current.iter().any(|p| p.name_any() == name) {
                continue;
            }
            let mut labels: BTreeMap<String, String> = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(OWNER.into(), owner.into());
            labels.insert("pod-template-hash".into(), hash.clone());
            let mut spec = template.spec.clone().unwrap_or_default();
            for claim in claims {
                spec.volumes
                    .get_or_insert_with(Vec::new)
                    .push(serde_json::from_value(json!({
                        "name": claim,
                        "persistentVolumeClaim": {"claimName": format!("{claim}-{owner}-{i}")},
                    }))?);
            }
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels,
                    "annotations": template.metadata.as_ref().and_then(|m| m.annotations.clone())},
                "spec": spec,
            }))?;
            let pod = pods.create(&PostParams::default(), &pod).await?;
            current.push(pod);
        }
        let healthy = !never_ready(template);
        let mut ready = 0;
        for pod in &current {
            let ip = match pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
                Some(ip) => ip.parse()?,
                None => IpAddr::V4(self.net.allocate()?),
            };
            self.remember(pod, ip)?;
            if pod_ready(pod) == healthy
                && pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_ref())
                    .is_some()
            {
                ready += i32::from(healthy);
                continue;
            }
            let containers: Vec<_> = pod
                .spec
                .as_ref()
                .map(|s| {
                    s.containers
                        .iter()
                        .map(|c| (c.name.clone(), c.image.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let flag = if healthy { "True" } else { "False" };
            let status = json!({"status": {
                "phase": if healthy { "Running" } else { "Pending" },
                "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                "hostIP": format!("{}.{}.{}.1", self.net.subnet[0], self.net.subnet[1], self.net.subnet[2]),
                "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                    {"type": "Ready", "status": flag, "lastTransitionTime": now},
                ],
                "containerStatuses": containers.iter().map(|(name, image)| {
                    let state = if healthy {
                        json!({"running": {"startedAt": now}})
                    } else {
                        json!({"waiting": {"reason": "ImagePullBackOff", "message": "played by the e2e stand"}})
                    };
                    json!({"name": name, "image": image, "imageID": "", "ready": healthy,
                        "restartCount": 0, "started": healthy, "state": state})
                }).collect::<Vec<_>>(),
            }});
            pods.patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await?;
            ready += i32::from(healthy);
        }
        Ok((current.len() as i32, current.len() as i32, ready))
    }

    fn remember(&self, pod: &Pod, ip: IpAddr) -> anyhow::Result<()> {
        let labels = pod.labels();
        let instance = labels
            .get(finflow_operator::meta::INSTANCE_LABEL)
            .cloned()
            .unwrap_or_default();
        let version = labels
            .get(finflow_operator::finservice::VERSION_LABEL)
            .cloned()
            .unwrap_or_default();
        self.apps
            .lock()
            .unwrap()
            .pods
            .insert(ip, (instance, version));
        Ok(())
    }

    fn forget(&self, pod: &Pod) {
        if let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
        {
            self.apps.lock().unwrap().pods.remove(&ip);
        }
    }

    /// Endpoints and an EndpointSlice for every Service with a selector: the Ready pods
    /// it selects (their current labels: the operator relabels pods), at the ports its
    /// target ports name; and a listener on each such port.
    async fn endpoints(&self) -> anyhow::Result<()> {
        let services: Api<Service> = self.api();
        let pods: Api<Pod> = self.api();
        let all_pods = pods.list(&ListParams::default()).await?.items;
        let params = PatchParams::apply(MANAGER).force();
        for svc in services.list(&ListParams::default()).await?.items {
            let spec = svc.spec.clone().unwrap_or_default();
            let Some(selector) = spec.selector.clone().filter(|s| !s.is_empty()) else {
                continue;
            };
            let chosen: Vec<&Pod> = all_pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
                .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
                .collect();
            let mut ports = Vec::new();
            for port in spec.ports.clone().unwrap_or_default() {
                let target = match &port.target_port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                        Some(*n)
                    }
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                        name,
                    )) => chosen.iter().find_map(|p| {
                        // A native sidecar is an init container: its ports count too.
                        let spec = p.spec.as_ref()?;
                        spec.containers
                            .iter()
                            .chain(spec.init_containers.iter().flatten())
                            .find_map(|c| {
                                c.ports.as_ref()?.iter().find_map(|cp| {
                                    (cp.name.as_deref() == Some(name.as_str()))
                                        .then_some(cp.container_port)
                                })
                            })
                    }),
                    None => Some(port.port),
                };
                if let Some(target) = target {
                    ports.push((port.name.clone(), target, port.protocol.clone()));
                    self.ensure_listening(u16::try_from(target)?)?;
                }
            }
            let address = |p: &Pod| {
                json!({"ip": p.status.as_ref().and_then(|s| s.pod_ip.clone()),
                    "targetRef": {"kind": "Pod", "name": p.name_any(), "namespace": self.ns, "uid": p.uid()}})
            };
            let (ready, unready): (Vec<&Pod>, Vec<&Pod>) =
                chosen.iter().partition(|p| pod_ready(p));
            let port_list: Vec<_> = ports
                .iter()
                .map(|(name, port, proto)| json!({"name": name, "port": port, "protocol": proto.clone().unwrap_or_else(|| "TCP".into())}))
                .collect();
            let subsets = if chosen.is_empty() {
                json!([])
            } else {
                json!([{
                    "addresses": ready.iter().map(|p| address(p)).collect::<Vec<_>>(),
                    "notReadyAddresses": unready.iter().map(|p| address(p)).collect::<Vec<_>>(),
                    "ports": port_list,
                }])
            };
            let name = svc.name_any();
            let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> = self.api();
            endpoints
                .patch(
                    &name,
                    &params,
                    &Patch::Apply(json!({"apiVersion": "v1", "kind": "Endpoints",
                        "metadata": {"name": name}, "subsets": subsets})),
                )
                .await?;
            let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = self.api();
            slices
                .patch(
                    &format!("{name}-stand"),
                    &params,
                    &Patch::Apply(json!({
                        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": format!("{name}-stand"), "labels": {
                            "kubernetes.io/service-name": name,
                            "endpointslice.kubernetes.io/managed-by": MANAGER}},
                        "addressType": "IPv4",
                        "endpoints": chosen.iter().map(|p| json!({
                            "addresses": [p.status.as_ref().and_then(|s| s.pod_ip.clone())],
                            "conditions": {"ready": pod_ready(p)},
                            "targetRef": {"kind": "Pod", "name": p.name_any(), "namespace": self.ns, "uid": p.uid()},
                        })).collect::<Vec<_>>(),
                        "ports": port_list,
                    })),
                )
                .await?;
        }
        Ok(())
    }

    fn ensure_listening(&self, port: u16) -> anyhow::Result<()> {
        let mut apps = self.apps.lock().unwrap();
        if apps.ports.contains(&port) {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::from_std(self.net.listen(port)?)?;
        apps.ports.insert(port);
        tokio::spawn(serve(listener, self.apps.clone()));
        Ok(())
    }
}
