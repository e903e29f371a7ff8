use crate::diag::{Diagnostics, Source};
use crate::model::{
    AllowEntry, DriftMode, HostPolicy, InterfaceSel, Mode, PortRange, Proto, RateUnit, Replies,
};
use crate::site::load_host_policy;
use ipnet::IpNet;

fn pol(text: &str) -> Result<HostPolicy, Diagnostics> {
    load_host_policy(&Source::new("p.yml", text))
}

/// Exactly these errors, in order: (line, column, a piece of the message).
#[track_caller]
fn errs(text: &str, want: &[(usize, usize, &str)]) {
    let e = pol(text).expect_err("expected errors");
    let got: Vec<(usize, usize, &str)> =
        e.0.iter()
            .map(|d| (d.line, d.column, d.message.as_str()))
            .collect();
    assert_eq!(got.len(), want.len(), "got:\n{e}");
    for ((l, c, m), (wl, wc, wm)) in got.iter().zip(want) {
        assert_eq!((l, c), (wl, wc), "at {m}\nall:\n{e}");
        assert!(m.contains(wm), "`{m}` does not contain `{wm}`");
    }
    assert!(e.0.iter().all(|d| d.file == "p.yml"));
}

fn entry(proto: Proto, start: u16, end: u16, from: &[&str], label: &str) -> AllowEntry {
    AllowEntry {
        proto,
        ports: PortRange { start, end },
        from: from.iter().map(|s| s.parse::<IpNet>().unwrap()).collect(),
        lists: Vec::new(),
        label: label.into(),
    }
}

#[test]
fn every_allow_form_and_scalar() {
    let p = pol("\
allow:
  - smtp/tcp
  - domain/udp
  - http/tcp
  - ntp/udp
  - ssh
  - 1000-1010/udp
  - { port: 2222, proto: tcp, from: [\"fd77::/64\", 10.77.0.0/24] }
  - 137/udplite
  - { port: 5000, proto: SCTP }
  - { port: 4000-4001, proto: dccp, from: [10.0.0.0/8] }
  - { service: ntp, proto: udp }
  - { port: \"6000-6010\", proto: tcp }
  - { service: imaps }
  - { port: 8080, proto: TCP, from: 192.0.2.7 }
interface: eth2
replies: stateful
log: { rate: 10/minute, burst: 5, group: 12 }
mode: audit
drift: report
")
    .unwrap();
    use Proto::{Tcp, Udp};
    assert_eq!(
        p.allow,
        vec![
            entry(Tcp, 22, 22, &[], "ssh"),
            entry(Tcp, 25, 25, &[], "smtp/tcp"),
            entry(Tcp, 80, 80, &[], "http/tcp"),
            entry(Tcp, 993, 993, &[], "imaps/tcp"),
            entry(Tcp, 2222, 2222, &["10.77.0.0/24", "fd77::/64"], "2222/tcp"),
            entry(Tcp, 6000, 6010, &[], "6000-6010/tcp"),
            entry(Tcp, 8080, 8080, &["192.0.2.7/32"], "8080/tcp"),
            entry(Udp, 53, 53, &[], "domain/udp"),
            entry(Udp, 123, 123, &[], "ntp/udp"),
            entry(Udp, 1000, 1010, &[], "1000-1010/udp"),
            entry(Proto::Udplite, 137, 137, &[], "137/udplite"),
            entry(Proto::Sctp, 5000, 5000, &[], "5000/sctp"),
            entry(Proto::Dccp, 4000, 4001, &["10.0.0.0/8"], "4000-4001/dccp"),
        ]
    );
    assert_eq!(p.interface, InterfaceSel::Named("eth2".into()));
    assert_eq!(p.replies, Replies::Stateful);
    assert_eq!(
        (p.log.rate, p.log.per, p.log.burst, p.log_group),
        (10, RateUnit::Minute, 5, 12)
    );
    assert_eq!((p.mode, p.drift), (Mode::Audit, DriftMode::Report));
}

#[test]
fn defaults_and_wrapper() {
    assert_eq!(pol("allow: []\n").unwrap(), HostPolicy::default());
    assert_eq!(pol("{}\n").unwrap(), HostPolicy::default());
    let p = pol("policy:\n  interface: default\n  allow: [25/tcp, smtp/tcp]\n").unwrap();
    assert_eq!(p.interface, InterfaceSel::Default);
    assert_eq!(p.allow.len(), 1, "same rule written twice is one entry");
    let p = pol("log: { burst: 7 }\n").unwrap();
    assert_eq!((p.log.rate, p.log.burst, p.log_group), (50, 7, 7));
    errs("", &[(1, 1, "the policy file is empty")]);
}

#[test]
fn allow_text_errors() {
    errs(
        "\
allow:
  - smtp/udp
  - domain
  - nosuch/tcp
  - 0/tcp
  - 70000/udp
  - 2000-1000/tcp
  - 22
  - domain/sctp
  - smpt/tcp
  - 22-x/tcp
",
        &[
            (2, 5, "service `smtp` is tcp only (tcp 25), not udp"),
            (
                3,
                5,
                "service `domain` exists for tcp/udp 53: write domain/tcp or domain/udp",
            ),
            (4, 5, "unknown service `nosuch`"),
            (5, 5, "port 0 in `0` is not a valid port"),
            (6, 5, "port 70000 in `70000` is out of range (1-65535)"),
            (7, 5, "port range `2000-1000` is reversed: 2000 > 1000"),
            (8, 5, "port `22` needs a protocol: write 22/tcp or 22/udp"),
            (
                9,
                5,
                "service `domain` is tcp/udp only (tcp/udp 53), not sctp; for sctp write the port: 53/sctp",
            ),
            (10, 5, "unknown service `smpt` (did you mean `smtp`?)"),
            (11, 5, "is not a port or port range"),
        ],
    );
}

#[test]
fn allow_mapping_errors() {
    errs(
        "\
allow:
  - { port: 22, proto: tcp, from: [10.77.0.1/24] }
  - { prot: tcp, port: 22 }
  - { service: ntp, proto: tcp }
  - { port: 22 }
  - [22, tcp]
  - { port: 22, service: ssh, proto: tcp }
  - { proto: tcp }
  - { port: 22, proto: tcp, from: [] }
  - { port: 22, proto: tcp, from: [nonsense, 10.0.0.0/33] }
  - { port: ssh, proto: tcp }
  - { port: [22], proto: tcp }
",
        &[
            (
                2,
                36,
                "`10.77.0.1/24` has host bits set; did you mean 10.77.0.0/24?",
            ),
            (
                3,
                7,
                "unknown key `prot` in allow entry: did you mean `proto`?",
            ),
            (4, 28, "service `ntp` is udp only (udp 123), not tcp"),
            (5, 5, "needs `proto: tcp` or `proto: udp`"),
            (6, 5, "an allow entry must be"),
            (7, 26, "either `port` or `service`, not both"),
            (8, 5, "needs `port` or `service`"),
            (9, 35, "`from` is empty"),
            (10, 36, "`nonsense` is not an IP network"),
            (10, 46, "`10.0.0.0/33` is not an IP network"),
            (11, 13, "for a service name use `service: ssh`"),
            (12, 13, "`port` must be a single value, found a list"),
        ],
    );
}

#[test]
fn scalar_and_key_errors() {
    errs(
        "\
interfce: eth0
replies: statefull
mode: [audit]
drift: fix
interface: this-name-is-far-too-long
allow: ssh
",
        &[
            (
                1,
                1,
                "unknown key `interfce` in policy: did you mean `interface`?",
            ),
            (
                2,
                10,
                "`replies`: unknown value `statefull` (did you mean `stateful`?); expected ports or stateful",
            ),
            (3, 7, "`mode` must be a single value, found a list"),
            (
                4,
                8,
                "`drift`: unknown value `fix`; expected heal or report",
            ),
            (5, 12, "is not an interface name"),
            (6, 8, "`allow` must be a list, found a scalar"),
        ],
    );
    errs(
        "- a\n",
        &[(1, 1, "`policy` must be a mapping, found a list")],
    );
}

#[test]
fn log_errors() {
    errs(
        "log: { rate: 0/second, burst: 0, group: 70000, foo: 1 }\n",
        &[
            (1, 14, "the rate must be at least 1"),
            (1, 31, "`log.burst`: 0 is out of range"),
            (
                1,
                41,
                "`log.group` (NFLOG group): 70000 is out of range (0-65535)",
            ),
            (1, 48, "unknown key `foo` in log"),
        ],
    );
    errs(
        "log: { rate: 5/seconds }\n",
        &[(1, 14, "unknown unit `seconds` (did you mean `second`?)")],
    );
    errs(
        "log: { rate: 5/fortnight }\n",
        &[(1, 14, "unknown unit `fortnight`; expected second")],
    );
    errs(
        "log: { rate: x/second }\n",
        &[(1, 14, "`x` is not a whole number")],
    );
    errs("log: { rate: 50 }\n", &[(1, 14, "expected N/second")]);
    errs(
        "log: { burst: many }\n",
        &[(1, 15, "expected a whole number, found `many`")],
    );
    errs("log: 5\n", &[(1, 6, "`log` must be a mapping")]);
}

#[test]
fn suggestions() {
    use super::suggest;
    assert_eq!(suggest("alow", ["allow", "log"]), Some("allow"));
    assert_eq!(suggest("xyzzy", ["allow", "log"]), None);
    assert_eq!(suggest("lg", ["log"]), Some("log"));
}

#[test]
fn a_burst_the_kernel_cannot_hold_is_refused() {
    errs(
        "log: { rate: 1/day, burst: 4294967295 }\n",
        &[(
            1,
            28,
            "too large for a rate per day (the kernel allows at most 213503)",
        )],
    );
    assert!(pol("log: { rate: 1/day, burst: 213503 }\n").is_ok());
    assert!(pol("log: { rate: 5/second, burst: 4294967295 }\n").is_ok());
}
