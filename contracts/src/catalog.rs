//! The six services (`docs/architecture.md`, Parts and ports): the one list the
//! launcher starts, the gateway routes to and the operator's graph orders.

/// One service of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The design's letter, lower case (`a`..`f`): a FinService's module.
    pub module: &'static str,
    /// Its name: events' `source`, logs, its database, its binary `finflow-<name>`.
    pub name: &'static str,
    /// Its OpenAPI document's title.
    pub title: &'static str,
    /// What it does, as its `--help` and its OpenAPI document say.
    pub about: &'static str,
    /// Its sidecar's port (the service's public port) and its app's (loopback only).
    pub sidecar_port: u16,
    pub app_port: u16,
    /// The modules that must be live before it.
    pub depends_on: &'static [&'static str],
    /// The path prefixes the gateway sends to it, unchanged.
    pub routes: &'static [&'static str],
}

/// The gateway's port, the platform's single local entry point.
pub const GATEWAY_PORT: u16 = 8000;

/// The services one by one ([`SERVICES`] lists them).
pub const AUTH: ServiceInfo = ServiceInfo {
    module: "a",
    name: "auth",
    title: "FinFlow auth (A)",
    about: "Identity, sessions and the JWT issuer",
    sidecar_port: 8001,
    app_port: 9001,
    depends_on: &[],
    routes: &["/api/v1/auth", "/api/v1/users", "/.well-known"],
};

pub const WALLET: ServiceInfo = ServiceInfo {
    module: "b",
    name: "wallet",
    title: "FinFlow wallet (B)",
    about: "Wallets, balances and the double-entry ledger",
    sidecar_port: 8002,
    app_port: 9002,
    depends_on: &["a"],
    routes: &["/api/v1/wallets"],
};

pub const PAYMENT: ServiceInfo = ServiceInfo {
    module: "c",
    name: "payment",
    title: "FinFlow payment (C)",
    about: "Idempotent payments applied exactly once",
    sidecar_port: 8003,
    app_port: 9003,
    depends_on: &["b"],
    routes: &["/api/v1/payments"],
};

pub const NOTIFICATION: ServiceInfo = ServiceInfo {
    module: "d",
    name: "notification",
    title: "FinFlow notification (D)",
    about: "Email, webhooks and in-app notifications",
    sidecar_port: 8004,
    app_port: 9004,
    depends_on: &["a", "c"],
    routes: &["/api/v1/notifications", "/api/v1/webhooks"],
};

pub const KYC: ServiceInfo = ServiceInfo {
    module: "e",
    name: "kyc",
    title: "FinFlow KYC/AML (E)",
    about: "KYC documents and AML monitoring",
    sidecar_port: 8005,
    app_port: 9005,
    depends_on: &["a", "c"],
    routes: &["/api/v1/kyc", "/api/v1/aml"],
};

pub const REPORTING: ServiceInfo = ServiceInfo {
    module: "f",
    name: "reporting",
    title: "FinFlow reporting (F)",
    about: "Reports from read models, and the dashboard",
    sidecar_port: 8006,
    app_port: 9006,
    depends_on: &["b", "c", "e"],
    routes: &["/api/v1/reports", "/dashboard"],
};

/// The six services, in letter order (which is also an order that deploys every
/// service after its dependencies).
pub const SERVICES: [ServiceInfo; 6] = [AUTH, WALLET, PAYMENT, NOTIFICATION, KYC, REPORTING];

impl ServiceInfo {
    /// What its `--help` says it is: "FinFlow service A (auth). Identity, sessions and
    /// the JWT issuer."
    pub fn help(&self) -> String {
        format!(
            "FinFlow service {} ({}). {}.",
            self.module.to_ascii_uppercase(),
            self.name,
            self.about
        )
    }
}

/// The service called `name`.
pub fn named(name: &str) -> Option<&'static ServiceInfo> {
    SERVICES.iter().find(|s| s.name == name)
}

/// The service of module `module` (`a`..`f`).
pub fn of_module(module: &str) -> Option<&'static ServiceInfo> {
    SERVICES.iter().find(|s| s.module == module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_comes_after_the_services_it_depends_on() {
        for (i, s) in SERVICES.iter().enumerate() {
            for d in s.depends_on {
                assert!(
                    SERVICES[..i].iter().any(|e| e.module == *d),
                    "{} before {d}",
                    s.name
                );
            }
        }
    }

    #[test]
    fn a_service_s_title_and_help_name_it_by_its_letter() {
        for s in &SERVICES {
            let letter = s.module.to_ascii_uppercase();
            assert!(s.title.ends_with(&format!(" ({letter})")), "{}", s.title);
            assert!(
                s.help()
                    .starts_with(&format!("FinFlow service {letter} ({}). ", s.name)),
                "{}",
                s.help()
            );
        }
        assert_eq!(
            WALLET.help(),
            "FinFlow service B (wallet). Wallets, balances and the double-entry ledger."
        );
    }

    #[test]
    fn names_modules_ports_and_routes_are_each_used_once() {
        let mut seen = std::collections::HashSet::new();
        for s in &SERVICES {
            for key in [s.module.to_owned(), s.name.to_owned()]
                .into_iter()
                .chain([s.sidecar_port, s.app_port].map(|p| p.to_string()))
                .chain(s.routes.iter().map(|r| (*r).to_owned()))
            {
                assert!(seen.insert(key.clone()), "{key} twice");
            }
            assert_eq!(named(s.name), Some(s));
            assert_eq!(of_module(s.module), Some(s));
        }
        assert!(!seen.contains(&GATEWAY_PORT.to_string()));
    }

    #[test]
    fn no_route_reaches_internal_paths_or_another_routes_prefix() {
        let routes: Vec<&str> = SERVICES
            .iter()
            .flat_map(|s| s.routes.iter().copied())
            .collect();
        for r in &routes {
            assert!(r.starts_with('/') && !r.ends_with('/'), "{r}");
            assert!(!r.starts_with("/internal"), "{r}");
            for other in &routes {
                assert!(
                    r == other || !other.starts_with(&format!("{r}/")),
                    "{r} shadows {other}"
                );
            }
        }
    }
}
