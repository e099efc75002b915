//! The service dependency graph: deploy order, rollback order, dependents.
//!
//! FinServices name the services they depend on (`dependsOn`). Deploying follows the
//! topological order in *waves*: a wave holds every service whose dependencies are all
//! in earlier waves, so the services of one wave can roll out side by side (A,
//! B, C, then D and E, then F). Rolling back walks the waves in reverse.

use std::collections::{BTreeMap, BTreeSet};

/// The platform's graph with the module letters as names, as the catalog
/// (`finflow_contracts::catalog`) has it: B on A, C on B, D and E on A and C, F on B,
/// C and E. The rollout scenarios use it.
pub const SIX_SERVICES: [(&str, &[&str]); 6] = {
    let s = &finflow_contracts::catalog::SERVICES;
    [
        (s[0].module, s[0].depends_on),
        (s[1].module, s[1].depends_on),
        (s[2].module, s[2].depends_on),
        (s[3].module, s[3].depends_on),
        (s[4].module, s[4].depends_on),
        (s[5].module, s[5].depends_on),
    ]
};

/// Why a set of dependencies is not a deployable graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("{0} depends on itself")]
    SelfDependency(String),
    #[error("{service} depends on {missing}, which does not exist")]
    UnknownDependency { service: String, missing: String },
    #[error("dependency cycle among: {}", .0.join(", "))]
    Cycle(Vec<String>),
}

/// A validated, acyclic dependency graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyGraph {
    /// service -> the services it depends on.
    depends_on: BTreeMap<String, BTreeSet<String>>,
}

impl DependencyGraph {
    /// Builds the graph from `(service, dependencies)` pairs, refusing self-dependencies,
    /// unknown services and cycles.
    pub fn new<I, S, D>(services: I) -> Result<Self, GraphError>
    where
        I: IntoIterator<Item = (S, D)>,
        S: Into<String>,
        D: IntoIterator,
        D::Item: Into<String>,
    {
        let depends_on: BTreeMap<String, BTreeSet<String>> = services
            .into_iter()
            .map(|(s, d)| (s.into(), d.into_iter().map(Into::into).collect()))
            .collect();
        for (service, deps) in &depends_on {
            if deps.contains(service) {
                return Err(GraphError::SelfDependency(service.clone()));
            }
            if let Some(missing) = deps.iter().find(|d| !depends_on.contains_key(*d)) {
                return Err(GraphError::UnknownDependency {
                    service: service.clone(),
                    missing: missing.clone(),
                });
            }
        }
        let graph = Self { depends_on };
        graph.waves()?;
        Ok(graph)
    }

    /// The graph of every service that neither is nor depends on a broken part (a cycle,
    /// a service depending on itself or on one that does not exist), and why each of the
    /// others is left out. One tenant's cycle must not stop the rest of the namespace:
    /// their rollouts, and the rollbacks their failed windows ask for, go on.
    pub fn sound_part<S, D>(services: &[(S, D)]) -> (Self, BTreeMap<String, GraphError>)
    where
        S: AsRef<str>,
        D: AsRef<[String]>,
    {
        let mut left_out: BTreeMap<String, GraphError> = BTreeMap::new();
        loop {
            let kept = services
                .iter()
                .filter(|(s, _)| !left_out.contains_key(s.as_ref()))
                .map(|(s, d)| (s.as_ref().to_owned(), d.as_ref().to_vec()));
            let error = match Self::new(kept) {
                Ok(graph) => return (graph, left_out),
                Err(e) => e,
            };
            // Each round leaves one out at least, so it ends.
            let broken = match &error {
                GraphError::SelfDependency(s) => vec![(s.clone(), error.clone())],
                // Only from here: `Standing::of` gives no dependency that does not exist.
                GraphError::UnknownDependency { service, missing } => {
                    let why = left_out
                        .get(missing)
                        .cloned()
                        .unwrap_or_else(|| error.clone());
                    vec![(service.clone(), why)]
                }
                // The members of each cycle, named with their own cycle; the services
                // depending on one are left out in later rounds, for its reason.
                GraphError::Cycle(stuck) => {
                    let deps_of = |service: &str| -> Vec<&String> {
                        services
                            .iter()
                            .find(|(s, _)| s.as_ref() == service)
                            .map(|(_, d)| d.as_ref().iter().filter(|d| stuck.contains(d)).collect())
                            .unwrap_or_default()
                    };
                    let reach: BTreeMap<&String, BTreeSet<&String>> = stuck
                        .iter()
                        .map(|from| {
                            let mut seen = BTreeSet::new();
                            let mut next = deps_of(from);
                            while let Some(s) = next.pop() {
                                if seen.insert(s) {
                                    next.extend(deps_of(s));
                                }
                            }
                            (from, seen)
                        })
                        .collect();
                    stuck
                        .iter()
                        .filter(|s| reach[s].contains(s))
                        .map(|s| {
                            let cycle = stuck
                                .iter()
                                .filter(|t| reach[s].contains(t) && reach[t].contains(s))
                                .cloned()
                                .collect();
                            (s.clone(), GraphError::Cycle(cycle))
                        })
                        .collect()
                }
            };
            left_out.extend(broken);
        }
    }

    /// Kahn's algorithm, one layer at a time; names sort within a wave for stable output.
    fn waves(&self) -> Result<Vec<Vec<String>>, GraphError> {
        let mut placed: BTreeSet<&str> = BTreeSet::new();
        let mut waves = Vec::new();
        while placed.len() < self.depends_on.len() {
            let wave: Vec<&str> = self
                .depends_on
                .iter()
                .filter(|(s, deps)| {
                    !placed.contains(s.as_str()) && deps.iter().all(|d| placed.contains(d.as_str()))
                })
                .map(|(s, _)| s.as_str())
                .collect();
            if wave.is_empty() {
                let stuck = self
                    .depends_on
                    .keys()
                    .filter(|s| !placed.contains(s.as_str()))
                    .cloned()
                    .collect();
                return Err(GraphError::Cycle(stuck));
            }
            placed.extend(wave.iter().copied());
            waves.push(wave.into_iter().map(str::to_owned).collect());
        }
        Ok(waves)
    }

    /// Deploy waves: every service comes after all of its dependencies.
    pub fn deploy_waves(&self) -> Vec<Vec<String>> {
        self.waves().unwrap_or_default()
    }

    /// Rollback waves: the deploy waves reversed, dependents before their dependencies.
    pub fn rollback_waves(&self) -> Vec<Vec<String>> {
        let mut waves = self.deploy_waves();
        waves.reverse();
        waves
    }

    /// The services `service` depends on directly.
    pub fn dependencies(&self, service: &str) -> impl Iterator<Item = &str> {
        self.depends_on
            .get(service)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Every service that depends on `service`, directly or through others.
    pub fn transitive_dependents(&self, service: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut frontier = vec![service.to_owned()];
        while let Some(current) = frontier.pop() {
            for (s, deps) in &self.depends_on {
                if deps.contains(&current) && found.insert(s.clone()) {
                    frontier.push(s.clone());
                }
            }
        }
        found
    }

    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.depends_on.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_sound_part_leaves_out_cycles_self_dependencies_and_what_depends_on_them() {
        let services: Vec<(&str, Vec<String>)> = [
            ("a", vec![]),
            ("b", vec!["a"]),
            ("x", vec!["y"]),
            ("y", vec!["x"]),
            ("z", vec!["y", "a"]),
            ("s", vec!["s"]),
            ("t", vec!["s"]),
            ("w", vec!["z"]),
        ]
        .into_iter()
        .map(|(s, d)| (s, d.into_iter().map(str::to_owned).collect()))
        .collect();
        let (graph, left_out) = DependencyGraph::sound_part(&services);
        assert_eq!(graph.deploy_waves(), [vec!["a"], vec!["b"]]);
        assert_eq!(
            left_out.keys().map(String::as_str).collect::<Vec<_>>(),
            ["s", "t", "w", "x", "y", "z"]
        );
        assert_eq!(left_out["s"], GraphError::SelfDependency("s".into()));
        assert_eq!(
            left_out["t"], left_out["s"],
            "left out for its dependency's reason"
        );
        let cycle = GraphError::Cycle(vec!["x".into(), "y".into()]);
        for s in ["x", "y", "z", "w"] {
            assert_eq!(left_out[s], cycle, "{s}: the cycle it is in or depends on");
        }
    }

    fn finflow() -> DependencyGraph {
        DependencyGraph::new([
            ("auth", vec![]),
            ("wallet", vec!["auth"]),
            ("payment", vec!["wallet"]),
            ("notification", vec!["auth", "payment"]),
            ("kyc", vec!["auth", "payment"]),
            ("reporting", vec!["wallet", "payment", "kyc"]),
        ])
        .unwrap()
    }

    #[test]
    fn finflow_deploys_in_the_designed_order() {
        assert_eq!(
            finflow().deploy_waves(),
            [
                vec!["auth"],
                vec!["wallet"],
                vec!["payment"],
                vec!["kyc", "notification"],
                vec!["reporting"],
            ]
        );
    }

    #[test]
    fn finflow_rolls_back_in_reverse() {
        let waves = finflow().rollback_waves();
        assert_eq!(waves.first().unwrap(), &["reporting"]);
        assert_eq!(waves.last().unwrap(), &["auth"]);
    }

    #[test]
    fn a_rollback_of_payment_reaches_everything_built_on_it() {
        let dependents = finflow().transitive_dependents("payment");
        assert_eq!(
            dependents.into_iter().collect::<Vec<_>>(),
            ["kyc", "notification", "reporting"]
        );
        assert!(finflow().transitive_dependents("reporting").is_empty());
    }

    #[test]
    fn self_unknown_and_cyclic_dependencies_are_refused() {
        assert_eq!(
            DependencyGraph::new([("a", vec!["a"])]),
            Err(GraphError::SelfDependency("a".into()))
        );
        assert!(matches!(
            DependencyGraph::new([("a", vec!["ghost"])]),
            Err(GraphError::UnknownDependency { .. })
        ));
        assert_eq!(
            DependencyGraph::new([("a", vec!["b"]), ("b", vec!["a"]), ("c", vec![])]),
            Err(GraphError::Cycle(vec!["a".into(), "b".into()]))
        );
    }

    /// Random DAGs: service `i` may only depend on services with a smaller index, then
    /// the names are shuffled so the index order is not the name order.
    fn dag() -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
        (1_usize..12)
            .prop_flat_map(|n| {
                let edges = proptest::collection::vec(proptest::bool::weighted(0.3), n * n);
                let names = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
                (Just(n), edges, names)
            })
            .prop_map(|(n, edges, names)| {
                (0..n)
                    .map(|i| {
                        let deps = (0..i)
                            .filter(|j| edges[i * n + j])
                            .map(|j| format!("s{}", names[j]))
                            .collect();
                        (format!("s{}", names[i]), deps)
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn every_service_deploys_after_all_its_dependencies(services in dag()) {
            let graph = DependencyGraph::new(services.clone()).unwrap();
            let waves = graph.deploy_waves();
            let wave_of = |s: &str| waves.iter().position(|w| w.iter().any(|x| x == s)).unwrap();
            prop_assert_eq!(waves.iter().map(Vec::len).sum::<usize>(), services.len());
            for (s, deps) in &services {
                for d in deps {
                    prop_assert!(wave_of(d) < wave_of(s), "{} deploys before its dependency {}", s, d);
                }
            }
        }

        #[test]
        fn dependents_roll_back_before_what_they_depend_on(services in dag()) {
            let graph = DependencyGraph::new(services).unwrap();
            let waves = graph.rollback_waves();
            let wave_of = |s: &str| waves.iter().position(|w| w.iter().any(|x| x == s)).unwrap();
            for s in graph.services() {
                for dependent in graph.transitive_dependents(s) {
                    prop_assert!(wave_of(&dependent) < wave_of(s));
                }
            }
        }
    }
}
