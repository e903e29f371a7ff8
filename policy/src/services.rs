//! The embedded service-name table (`smtp` -> 25/tcp), typed from Debian's `/etc/services`
//! (netbase), which follows the IANA registry: every tcp/udp entry, with its aliases.
//!
//! Lookups only: this module must not read `/etc/services` at run time (the policy must mean
//! the same thing on every host) and knows nothing about YAML or policies.

use crate::model::Proto;

/// Which protocols an entry is registered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    Tcp,
    Udp,
    Both,
}

use On::{Both as B, Tcp as T, Udp as U};

impl On {
    fn has(self, proto: Proto) -> bool {
        matches!(
            (self, proto),
            (On::Both | On::Tcp, Proto::Tcp) | (On::Both | On::Udp, Proto::Udp)
        )
    }
}

/// (name, port, protocols, aliases), in `/etc/services` order.
#[rustfmt::skip]
static SERVICES: &[(&str, u16, On, &[&str])] = &[
    ("tcpmux", 1, T, &[]),
    ("echo", 7, B, &[]),
    ("discard", 9, B, &["sink", "null"]),
    ("systat", 11, T, &["users"]),
    ("daytime", 13, B, &[]),
    ("netstat", 15, T, &[]),
    ("qotd", 17, T, &["quote"]),
    ("chargen", 19, B, &["ttytst", "source"]),
    ("ftp-data", 20, T, &[]),
    ("ftp", 21, T, &[]),
    ("fsp", 21, U, &["fspd"]),
    ("ssh", 22, T, &[]),
    ("telnet", 23, T, &[]),
    ("smtp", 25, T, &["mail"]),
    ("time", 37, B, &["timserver"]),
    ("whois", 43, T, &["nicname"]),
    ("tacacs", 49, B, &[]),
    ("domain", 53, B, &[]),
    ("bootps", 67, U, &[]),
    ("bootpc", 68, U, &[]),
    ("tftp", 69, U, &[]),
    ("gopher", 70, T, &[]),
    ("finger", 79, T, &[]),
    ("http", 80, T, &["www"]),
    ("kerberos", 88, B, &["kerberos5", "krb5", "kerberos-sec"]),
    ("iso-tsap", 102, T, &["tsap"]),
    ("acr-nema", 104, T, &["dicom"]),
    ("pop3", 110, T, &["pop-3"]),
    ("sunrpc", 111, B, &["portmapper"]),
    ("auth", 113, T, &["authentication", "tap", "ident"]),
    ("nntp", 119, T, &["readnews", "untp"]),
    ("ntp", 123, U, &[]),
    ("epmap", 135, T, &["loc-srv"]),
    ("netbios-ns", 137, U, &[]),
    ("netbios-dgm", 138, U, &[]),
    ("netbios-ssn", 139, T, &[]),
    ("imap2", 143, T, &["imap"]),
    ("snmp", 161, B, &[]),
    ("snmp-trap", 162, B, &["snmptrap"]),
    ("cmip-man", 163, B, &[]),
    ("cmip-agent", 164, B, &[]),
    ("mailq", 174, T, &[]),
    ("xdmcp", 177, U, &[]),
    ("bgp", 179, T, &[]),
    ("smux", 199, T, &[]),
    ("qmtp", 209, T, &[]),
    ("z3950", 210, T, &["wais"]),
    ("ipx", 213, U, &[]),
    ("ptp-event", 319, U, &[]),
    ("ptp-general", 320, U, &[]),
    ("pawserv", 345, T, &[]),
    ("zserv", 346, T, &[]),
    ("rpc2portmap", 369, B, &[]),
    ("codaauth2", 370, B, &[]),
    ("clearcase", 371, U, &["Clearcase"]),
    ("ldap", 389, B, &[]),
    ("svrloc", 427, B, &[]),
    ("https", 443, B, &[]),
    ("snpp", 444, T, &[]),
    ("microsoft-ds", 445, T, &[]),
    ("kpasswd", 464, B, &[]),
    ("submissions", 465, T, &["ssmtp", "smtps", "urd"]),
    ("saft", 487, T, &[]),
    ("isakmp", 500, U, &[]),
    ("rtsp", 554, B, &[]),
    ("nqs", 607, T, &[]),
    ("asf-rmcp", 623, U, &[]),
    ("qmqp", 628, T, &[]),
    ("ipp", 631, T, &[]),
    ("ldp", 646, B, &[]),
    ("exec", 512, T, &[]),
    ("biff", 512, U, &["comsat"]),
    ("login", 513, T, &[]),
    ("who", 513, U, &["whod"]),
    ("shell", 514, T, &["cmd", "syslog"]),
    ("syslog", 514, U, &[]),
    ("printer", 515, T, &["spooler"]),
    ("talk", 517, U, &[]),
    ("ntalk", 518, U, &[]),
    ("route", 520, U, &["router", "routed"]),
    ("gdomap", 538, B, &[]),
    ("uucp", 540, T, &["uucpd"]),
    ("klogin", 543, T, &[]),
    ("kshell", 544, T, &["krcmd"]),
    ("dhcpv6-client", 546, U, &[]),
    ("dhcpv6-server", 547, U, &[]),
    ("afpovertcp", 548, T, &[]),
    ("nntps", 563, T, &["snntp"]),
    ("submission", 587, T, &[]),
    ("ldaps", 636, B, &[]),
    ("tinc", 655, B, &[]),
    ("silc", 706, T, &[]),
    ("kerberos-adm", 749, T, &[]),
    ("domain-s", 853, B, &[]),
    ("rsync", 873, T, &[]),
    ("ftps-data", 989, T, &[]),
    ("ftps", 990, T, &[]),
    ("telnets", 992, T, &[]),
    ("imaps", 993, T, &[]),
    ("pop3s", 995, T, &[]),
    ("socks", 1080, T, &[]),
    ("proofd", 1093, T, &[]),
    ("rootd", 1094, T, &[]),
    ("openvpn", 1194, B, &[]),
    ("rmiregistry", 1099, T, &[]),
    ("lotusnote", 1352, T, &["lotusnotes"]),
    ("ms-sql-s", 1433, T, &[]),
    ("ms-sql-m", 1434, U, &[]),
    ("ingreslock", 1524, T, &[]),
    ("datametrics", 1645, B, &["old-radius"]),
    ("sa-msg-port", 1646, B, &["old-radacct"]),
    ("kermit", 1649, T, &[]),
    ("groupwise", 1677, T, &[]),
    ("l2f", 1701, U, &["l2tp"]),
    ("radius", 1812, B, &[]),
    ("radius-acct", 1813, B, &["radacct"]),
    ("cisco-sccp", 2000, T, &[]),
    ("nfs", 2049, B, &[]),
    ("gnunet", 2086, B, &[]),
    ("rtcm-sc104", 2101, B, &[]),
    ("gsigatekeeper", 2119, T, &[]),
    ("gris", 2135, T, &[]),
    ("cvspserver", 2401, T, &[]),
    ("venus", 2430, B, &[]),
    ("venus-se", 2431, B, &[]),
    ("codasrv", 2432, B, &[]),
    ("codasrv-se", 2433, B, &[]),
    ("mon", 2583, B, &[]),
    ("dict", 2628, T, &[]),
    ("f5-globalsite", 2792, T, &[]),
    ("gsiftp", 2811, T, &[]),
    ("gpsd", 2947, T, &[]),
    ("gds-db", 3050, T, &["gds_db"]),
    ("icpv2", 3130, U, &["icp"]),
    ("isns", 3205, B, &[]),
    ("iscsi-target", 3260, T, &[]),
    ("mysql", 3306, T, &[]),
    ("ms-wbt-server", 3389, T, &[]),
    ("nut", 3493, B, &[]),
    ("distcc", 3632, T, &[]),
    ("daap", 3689, T, &[]),
    ("svn", 3690, T, &["subversion"]),
    ("suucp", 4031, T, &[]),
    ("sysrqd", 4094, T, &[]),
    ("sieve", 4190, T, &[]),
    ("epmd", 4369, T, &[]),
    ("remctl", 4373, T, &[]),
    ("f5-iquery", 4353, T, &[]),
    ("ntske", 4460, T, &[]),
    ("ipsec-nat-t", 4500, U, &[]),
    ("iax", 4569, U, &[]),
    ("mtn", 4691, T, &[]),
    ("radmin-port", 4899, T, &[]),
    ("sip", 5060, B, &[]),
    ("sip-tls", 5061, B, &[]),
    ("xmpp-client", 5222, T, &["jabber-client"]),
    ("xmpp-server", 5269, T, &["jabber-server"]),
    ("cfengine", 5308, T, &[]),
    ("mdns", 5353, U, &[]),
    ("postgresql", 5432, T, &["postgres"]),
    ("freeciv", 5556, T, &["rptp"]),
    ("amqps", 5671, T, &[]),
    ("amqp", 5672, T, &[]),
    ("x11", 6000, T, &["x11-0"]),
    ("x11-1", 6001, T, &[]),
    ("x11-2", 6002, T, &[]),
    ("x11-3", 6003, T, &[]),
    ("x11-4", 6004, T, &[]),
    ("x11-5", 6005, T, &[]),
    ("x11-6", 6006, T, &[]),
    ("x11-7", 6007, T, &[]),
    ("gnutella-svc", 6346, B, &[]),
    ("gnutella-rtr", 6347, B, &[]),
    ("redis", 6379, T, &[]),
    ("sge-qmaster", 6444, T, &["sge_qmaster"]),
    ("sge-execd", 6445, T, &["sge_execd"]),
    ("mysql-proxy", 6446, T, &[]),
    ("babel", 6696, U, &[]),
    ("ircs-u", 6697, T, &[]),
    ("bbs", 7000, T, &[]),
    ("afs3-fileserver", 7000, U, &[]),
    ("afs3-callback", 7001, U, &[]),
    ("afs3-prserver", 7002, U, &[]),
    ("afs3-vlserver", 7003, U, &[]),
    ("afs3-kaserver", 7004, U, &[]),
    ("afs3-volser", 7005, U, &[]),
    ("afs3-bos", 7007, U, &[]),
    ("afs3-update", 7008, U, &[]),
    ("afs3-rmtsys", 7009, U, &[]),
    ("font-service", 7100, T, &["xfs"]),
    ("http-alt", 8080, T, &["webcache"]),
    ("puppet", 8140, T, &[]),
    ("bacula-dir", 9101, T, &[]),
    ("bacula-fd", 9102, T, &[]),
    ("bacula-sd", 9103, T, &[]),
    ("xmms2", 9667, T, &[]),
    ("nbd", 10809, T, &[]),
    ("zabbix-agent", 10050, T, &[]),
    ("zabbix-trapper", 10051, T, &[]),
    ("amanda", 10080, T, &[]),
    ("dicom", 11112, T, &[]),
    ("hkp", 11371, T, &[]),
    ("db-lsp", 17500, T, &[]),
    ("dcap", 22125, T, &[]),
    ("gsidcap", 22128, T, &[]),
    ("wnn6", 22273, T, &[]),
    ("kerberos4", 750, B, &["kerberos-iv", "kdc"]),
    ("kerberos-master", 751, B, &["kerberos_master"]),
    ("passwd-server", 752, U, &["passwd_server"]),
    ("krb-prop", 754, T, &["krb_prop", "krb5_prop", "hprop"]),
    ("zephyr-srv", 2102, U, &[]),
    ("zephyr-clt", 2103, U, &[]),
    ("zephyr-hm", 2104, U, &[]),
    ("iprop", 2121, T, &[]),
    ("supfilesrv", 871, T, &[]),
    ("supfiledbg", 1127, T, &[]),
    ("poppassd", 106, T, &[]),
    ("moira-db", 775, T, &["moira_db"]),
    ("moira-update", 777, T, &["moira_update"]),
    ("moira-ureg", 779, U, &["moira_ureg"]),
    ("spamd", 783, T, &[]),
    ("skkserv", 1178, T, &[]),
    ("predict", 1210, U, &[]),
    ("rmtcfg", 1236, T, &[]),
    ("xtel", 1313, T, &[]),
    ("xtelw", 1314, T, &[]),
    ("zebrasrv", 2600, T, &[]),
    ("zebra", 2601, T, &[]),
    ("ripd", 2602, T, &[]),
    ("ripngd", 2603, T, &[]),
    ("ospfd", 2604, T, &[]),
    ("bgpd", 2605, T, &[]),
    ("ospf6d", 2606, T, &[]),
    ("ospfapi", 2607, T, &[]),
    ("isisd", 2608, T, &[]),
    ("fax", 4557, T, &[]),
    ("hylafax", 4559, T, &[]),
    ("munin", 4949, T, &["lrrd"]),
    ("rplay", 5555, U, &[]),
    ("nrpe", 5666, T, &[]),
    ("nsca", 5667, T, &[]),
    ("canna", 5680, T, &[]),
    ("syslog-tls", 6514, T, &[]),
    ("sane-port", 6566, T, &["sane", "saned"]),
    ("ircd", 6667, T, &[]),
    ("zope-ftp", 8021, T, &[]),
    ("tproxy", 8081, T, &[]),
    ("omniorb", 8088, T, &[]),
    ("clc-build-daemon", 8990, T, &[]),
    ("xinetd", 9098, T, &[]),
    ("git", 9418, T, &[]),
    ("zope", 9673, T, &[]),
    ("webmin", 10000, T, &[]),
    ("kamanda", 10081, T, &[]),
    ("amandaidx", 10082, T, &[]),
    ("amidxtape", 10083, T, &[]),
    ("sgi-cmsd", 17001, U, &[]),
    ("sgi-crsd", 17002, U, &[]),
    ("sgi-gcd", 17003, U, &[]),
    ("sgi-cad", 17004, T, &[]),
    ("binkp", 24554, T, &[]),
    ("asp", 27374, B, &[]),
    ("csync2", 30865, T, &[]),
    ("dircproxy", 57000, T, &[]),
    ("tfido", 60177, T, &[]),
    ("fido", 60179, T, &[]),
];

fn entries(
    name: &str,
) -> impl Iterator<Item = &'static (&'static str, u16, On, &'static [&'static str])> {
    SERVICES
        .iter()
        .filter(move |(n, _, _, aliases)| *n == name || aliases.contains(&name))
}

/// The port of service `name` (or one of its aliases) on `proto`, if registered.
pub fn lookup(name: &str, proto: Proto) -> Option<u16> {
    entries(name)
        .find(|(_, _, on, _)| on.has(proto))
        .map(|(_, port, _, _)| *port)
}

/// Every (protocol, port) the service `name` is registered for, sorted; empty if unknown.
pub fn protos_for(name: &str) -> Vec<(Proto, u16)> {
    let mut out: Vec<(Proto, u16)> = entries(name)
        .flat_map(|(_, port, on, _)| {
            [Proto::Tcp, Proto::Udp]
                .into_iter()
                .filter(|p| on.has(*p))
                .map(|p| (p, *port))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether `name` is a known service name or alias.
pub fn is_known(name: &str) -> bool {
    entries(name).next().is_some()
}

/// Every canonical name and alias, for "did you mean" suggestions.
pub fn all_names() -> impl Iterator<Item = &'static str> {
    SERVICES
        .iter()
        .flat_map(|(n, _, _, aliases)| std::iter::once(*n).chain(aliases.iter().copied()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use Proto::{Tcp, Udp};

    #[test]
    fn seed_services() {
        assert_eq!(lookup("smtp", Tcp), Some(25));
        assert_eq!(lookup("smtp", Udp), None);
        assert_eq!(lookup("domain", Udp), Some(53));
        assert_eq!(lookup("domain", Tcp), Some(53));
        assert_eq!(lookup("http", Tcp), Some(80));
        assert_eq!(lookup("www", Tcp), Some(80));
        assert_eq!(lookup("ntp", Udp), Some(123));
        assert_eq!(lookup("ssh", Tcp), Some(22));
        assert_eq!(lookup("https", Tcp), Some(443));
        assert_eq!(lookup("netbios-ns", Udp), Some(137));
        assert_eq!(lookup("mail", Tcp), Some(25));
        assert_eq!(lookup("nonsense", Tcp), None);
    }

    #[test]
    fn protocols_of_a_name() {
        assert_eq!(protos_for("domain"), vec![(Tcp, 53), (Udp, 53)]);
        assert_eq!(protos_for("smtp"), vec![(Tcp, 25)]);
        assert_eq!(protos_for("ntp"), vec![(Udp, 123)]);
        assert!(protos_for("nope").is_empty());
        assert!(is_known("www") && !is_known("nope"));
    }

    #[test]
    fn table_is_sane() {
        assert!(SERVICES.len() >= 150);
        assert!(SERVICES.iter().all(|(n, p, _, _)| !n.is_empty() && *p > 0));
        // Every well-known name resolves to itself.
        for (n, p, on, _) in SERVICES.iter().filter(|e| e.1 < 1024) {
            let proto = if on.has(Tcp) { Tcp } else { Udp };
            assert!(lookup(n, proto).is_some(), "{n} {p}");
        }
        assert!(all_names().any(|n| n == "www"));
    }
}
