//! The one integration test binary. It runs with its own harness (libtest-mimic) so that the
//! real dockerd it needs is started once, shared, and stopped after the last test.

mod browser;
mod cli;
mod config;
mod data;
mod disk;
mod docker;
mod egress;
mod engine;
mod firewall;
mod hostile_service;
mod images;
mod keyring;
mod langfuse;
mod lifecycle;
mod logging;
mod mcp;
mod mcp_tools;
mod oidc;
mod openapi_tools;
mod pool;
mod projects;
mod projects_session;
mod remotes;
mod run;
mod run_service;
mod serve;
mod serve_hardening;
mod serve_projects;
mod serve_tokens;
mod session;
mod setup_systemd;
mod snapshot;
mod ssh_files;
mod ssh_proxy;
mod store_conformance;
mod support;
mod swarm;
mod sysbox;
mod tables;
mod terminal;

use libtest_mimic::Arguments;

/// `trials![module::test_fn, ...]`: each test is named by its path.
macro_rules! trials {
    ($($test:path),* $(,)?) => {
        {
            let module = module_path!().trim_start_matches("integration::");
            vec![$(::libtest_mimic::Trial::test(format!("{module}::{}", stringify!($test)), $test)),*]
        }
    };
}
pub(crate) use trials;

/// `sysbox_trials![...]`: tests that prove a property of Sysbox itself (the Sysbox group). They
/// run where Sysbox is; elsewhere the run names them in its not-run line.
macro_rules! sysbox_trials {
    ($($test:path),* $(,)?) => {
        crate::support::sysbox::group(crate::trials![$($test),*])
    };
}
pub(crate) use sysbox_trials;

fn main() {
    let args = Arguments::from_args();
    let mut tests = Vec::new();
    tests.extend(browser::tests());
    tests.extend(cli::tests());
    tests.extend(config::tests());
    tests.extend(disk::tests());
    tests.extend(docker::tests());
    tests.extend(engine::tests());
    tests.extend(swarm::tests());
    tests.extend(firewall::tests());
    tests.extend(hostile_service::tests());
    tests.extend(images::tests());
    tests.extend(keyring::tests());
    tests.extend(langfuse::tests());
    tests.extend(lifecycle::tests());
    tests.extend(logging::tests());
    tests.extend(mcp::tests());
    tests.extend(mcp_tools::tests());
    tests.extend(oidc::tests());
    tests.extend(openapi_tools::tests());
    tests.extend(pool::tests());
    tests.extend(projects::tests());
    tests.extend(serve::tests());
    tests.extend(serve_hardening::tests());
    tests.extend(serve_projects::tests());
    tests.extend(serve_tokens::tests());
    tests.extend(projects_session::tests());
    tests.extend(remotes::tests());
    tests.extend(run::tests());
    tests.extend(run_service::tests());
    tests.extend(data::tests());
    tests.extend(session::tests());
    tests.extend(setup_systemd::tests());
    tests.extend(snapshot::tests());
    tests.extend(ssh_files::tests());
    tests.extend(ssh_proxy::tests());
    tests.extend(store_conformance::tests());
    tests.extend(sysbox::tests());
    tests.extend(terminal::tests());
    tests.extend(tables::tests());
    // Last: every dockerd that starts on the host removes and re-creates the shared DOCKER
    // iptables chains, and a network or published port made in that moment fails ("No
    // chain/target/match"). The disk, engine, firewall and setup tests start dockerds; the
    // egress tests, which create several networks and sessions in a row, run after them.
    tests.extend(egress::tests());
    let conclusion = libtest_mimic::run(&args, tests);
    support::teardown();
    if let Some(line) = support::sysbox::not_run_line(&args) {
        println!("{line}");
    }
    conclusion.exit();
}
