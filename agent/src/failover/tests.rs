//! Unit tests of the controller list and the failover order (no network).

#![allow(clippy::unwrap_used)]

use super::*;
use std::collections::BTreeSet;

fn controllers(urls: &[&str]) -> Vec<Controller> {
    parse_controllers(urls).unwrap()
}

/// Three controllers by IP address: three candidates.
fn three() -> Vec<Candidate> {
    let c = controllers(&[
        "https://10.77.0.1:7443",
        "https://10.77.0.2:7443",
        "https://[fd77::3]:7443",
    ]);
    candidates(&c, &[])
}

fn tries(r: &mut Rotation) -> Vec<Candidate> {
    let mut out = Vec::new();
    while let Step::Try(c) = r.step() {
        out.push(c);
    }
    out
}

#[test]
fn the_first_round_tries_every_candidate_once_then_backs_off() {
    let mut r = Rotation::new(seed_for("h1"));
    assert_eq!(r.begin_round(three()), 0);
    let round = tries(&mut r);
    assert_eq!(round.len(), 3);
    let distinct: BTreeSet<_> = round.iter().collect();
    assert_eq!(distinct.len(), 3, "{round:?}");
    // Exhausted: back off, and keep saying so until another round begins.
    assert_eq!(r.step(), Step::RoundFailed);
    assert_eq!(r.step(), Step::RoundFailed);
    // After the backoff the next round has the same order (nothing was established).
    r.begin_round(three());
    assert_eq!(tries(&mut r), round);
}

#[test]
fn no_candidate_at_all_is_a_failed_round() {
    let mut r = Rotation::new(1);
    assert_eq!(r.begin_round(Vec::new()), 0);
    assert_eq!(r.step(), Step::RoundFailed);
}

#[test]
fn after_a_drop_the_same_controller_is_tried_first() {
    for host in ["h1", "h2", "h3", "web-17", "db.example.net"] {
        let mut r = Rotation::new(seed_for(host));
        r.begin_round(three());
        // The first candidate fails, the second takes the session.
        let Step::Try(_) = r.step() else { panic!() };
        let Step::Try(second) = r.step() else {
            panic!()
        };
        assert!(!r.established(&second), "the first session is no failover");
        // That session ends (dropped, or the reconnect of commit-confirm): same one first.
        r.begin_round(three());
        assert_eq!(r.step(), Step::Try(second.clone()), "{host}");
        assert!(
            !r.established(&second),
            "{host}: reconnecting is not a failover"
        );
        r.begin_round(three());
        assert_eq!(r.step(), Step::Try(second), "{host}");
    }
}

#[test]
fn the_first_session_is_no_failover() {
    let mut r = Rotation::new(7);
    r.begin_round(three());
    let Step::Try(c) = r.step() else { panic!() };
    assert!(!r.established(&c));
    assert_eq!(r.home(), Some(&c));
}

#[test]
fn a_failed_connect_moves_to_the_next_in_this_agents_order() {
    let mut r = Rotation::new(seed_for("h2"));
    let order = r.order(three());
    // On order[1]; it goes away: order[1] first, then order[2], then order[0] (a cycle).
    r.established(&order[1]);
    r.begin_round(three());
    assert_eq!(
        tries(&mut r),
        vec![order[1].clone(), order[2].clone(), order[0].clone()]
    );
    // order[2] takes over: a failover; the next round starts there.
    r.begin_round(three());
    assert_eq!(r.step(), Step::Try(order[1].clone()));
    assert_eq!(r.step(), Step::Try(order[2].clone()));
    assert!(r.established(&order[2]));
    r.begin_round(three());
    assert_eq!(r.step(), Step::Try(order[2].clone()));
}

#[test]
fn the_order_is_stable_per_agent_and_ignores_the_input_order() {
    let r = Rotation::new(seed_for("h1"));
    let mut reversed = three();
    reversed.reverse();
    assert_eq!(r.order(three()), r.order(reversed));
    // The same host (a restart) gets the same order again.
    assert_eq!(
        Rotation::new(seed_for("h1")).order(three()),
        r.order(three())
    );
    // Established sessions and rounds do not reshuffle it.
    let mut r2 = r.clone();
    let order = r.order(three());
    r2.established(&order[2]);
    assert_eq!(r2.order(three()), order);
}

#[test]
fn a_fleet_spreads_over_the_controllers_and_over_the_survivors() {
    let cands = three();
    let mut first: BTreeMap<usize, usize> = BTreeMap::new();
    // Agents on controller 0 when it dies: where does each one go?
    let mut successor: BTreeMap<usize, usize> = BTreeMap::new();
    let n = 600;
    for i in 0..n {
        let mut r = Rotation::new(seed_for(&format!("host-{i}")));
        let order = r.order(cands.clone());
        *first.entry(order[0].controller).or_default() += 1;
        let on_zero = cands.iter().find(|c| c.controller == 0).unwrap();
        r.established(on_zero);
        r.begin_round(cands.clone());
        assert_eq!(r.step(), Step::Try(on_zero.clone()));
        let Step::Try(next) = r.step() else { panic!() };
        *successor.entry(next.controller).or_default() += 1;
    }
    assert_eq!(first.len(), 3, "{first:?}");
    assert!(first.values().all(|k| *k > n / 5), "{first:?}");
    assert_eq!(successor.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert!(successor.values().all(|k| *k > n / 3), "{successor:?}");
}

#[test]
fn a_home_gone_from_the_name_continues_after_it() {
    let c = controllers(&["https://ctl.example.net:7443"]);
    let addrs: Vec<SocketAddr> = (1..=4)
        .map(|i| format!("10.77.1.{i}:7443").parse().unwrap())
        .collect();
    let all = candidates(&c, std::slice::from_ref(&addrs));
    let mut r = Rotation::new(seed_for("h1"));
    let order = r.order(all.clone());
    r.established(&order[1]);
    // The name no longer resolves to order[1]: the round starts with order[2].
    let without: Vec<Candidate> = all.into_iter().filter(|x| *x != order[1]).collect();
    r.begin_round(without);
    assert_eq!(
        tries(&mut r),
        vec![order[2].clone(), order[3].clone(), order[0].clone()]
    );
}

#[test]
fn each_address_of_a_name_is_a_candidate_of_that_controller() {
    let c = controllers(&["https://ctl.example.net:7443", "https://10.77.0.9:7443"]);
    assert_eq!(c[0].ip, None);
    assert_eq!(c[0].host, "ctl.example.net");
    assert_eq!(c[1].literal(), Some("10.77.0.9:7443".parse().unwrap()));
    let a: SocketAddr = "10.77.1.1:7443".parse().unwrap();
    let b: SocketAddr = "[fd77::1:2]:7443".parse().unwrap();
    // A duplicate address is one candidate; resolutions for an IP URL are ignored.
    let got = candidates(&c, &[vec![a, b, a], vec![b]]);
    let want: Vec<(usize, SocketAddr)> = vec![(0, a), (0, b), (1, c[1].literal().unwrap())];
    let got: Vec<(usize, SocketAddr)> = got.iter().map(|x| (x.controller, x.addr)).collect();
    assert_eq!(got, want);
    assert_eq!(
        candidates(&c, &[vec![a]])[0].to_string(),
        "https://ctl.example.net:7443 (10.77.1.1:7443)"
    );
    // A name that did not resolve contributes nothing.
    assert_eq!(candidates(&c, &[]).len(), 1);
}

#[test]
fn at_most_max_addresses_per_name_and_which_ones_depends_on_the_agent() {
    let c = controllers(&["https://ctl.example.net:7443", "https://10.77.0.9:7443"]);
    let many: Vec<SocketAddr> = (1..=40)
        .map(|i| format!("10.77.2.{i}:7443").parse().unwrap())
        .collect();
    let all = candidates(&c, &[many]);
    assert_eq!(all.len(), 41);
    let mut kept_sets = BTreeSet::new();
    for host in ["h1", "h2", "h3", "h4"] {
        let mut r = Rotation::new(seed_for(host));
        assert_eq!(r.begin_round(all.clone()), 40 - MAX_ADDRESSES, "{host}");
        let round = tries(&mut r);
        assert_eq!(round.len(), MAX_ADDRESSES + 1, "{host}");
        assert_eq!(round.iter().filter(|x| x.controller == 1).count(), 1);
        let kept: BTreeSet<SocketAddr> = round
            .iter()
            .filter(|x| x.controller == 0)
            .map(|x| x.addr)
            .collect();
        kept_sets.insert(kept);
    }
    assert!(kept_sets.len() > 1, "every agent kept the same addresses");
}

#[test]
fn the_list_is_bounded() {
    let urls: Vec<String> = (1..=MAX_CONTROLLERS + 1)
        .map(|i| format!("https://10.77.0.{i}:7443"))
        .collect();
    assert_eq!(
        parse_controllers(&urls),
        Err(ControllersError::TooMany {
            count: MAX_CONTROLLERS + 1
        })
    );
    assert_eq!(
        parse_controllers(&urls[..MAX_CONTROLLERS]).unwrap().len(),
        MAX_CONTROLLERS
    );
    assert_eq!(parse_controllers::<&str>(&[]), Err(ControllersError::Empty));
    assert!(
        ControllersError::Empty.to_string().contains("--controller"),
        "{}",
        ControllersError::Empty
    );
}

#[test]
fn a_bad_url_is_named_with_its_position() {
    let e = parse_controllers(&["https://10.77.0.1:7443", "http://10.77.0.2:7443"]).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(
            e,
            ControllersError::Bad {
                position: 2,
                count: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(text.contains("controller 2 of 2"), "{text}");
    assert!(text.contains("\"http://10.77.0.2:7443\""), "{text}");
    assert!(text.contains("https://HOST:PORT"), "{text}");

    for bad in [
        "10.77.0.1:7443",
        "https://",
        "not a url",
        "https://a b:7443",
    ] {
        let e = parse_controllers(&[bad]).unwrap_err();
        assert!(
            matches!(e, ControllersError::Bad { position: 1, .. }),
            "{bad}: {e:?}"
        );
    }

    let e = parse_controllers(&["https://10.77.0.1:7443", " ", "https://b:1"]).unwrap_err();
    assert_eq!(
        e,
        ControllersError::Blank {
            position: 2,
            count: 3
        }
    );
    assert!(e.to_string().contains("controller 2 of 3 is empty"), "{e}");
}

#[test]
fn a_controller_given_twice_is_refused() {
    let e =
        parse_controllers(&["https://CTL.example:7443", "https://ctl.example:7443"]).unwrap_err();
    assert_eq!(
        e,
        ControllersError::Duplicate {
            url: "https://ctl.example:7443".to_owned(),
            first: 1,
            second: 2
        }
    );
    // Same host, another port: two controllers.
    assert_eq!(
        parse_controllers(&["https://ctl.example:7443", "https://ctl.example:7444"])
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn urls_are_trimmed_and_ports_default_to_443() {
    let c = controllers(&[" https://10.77.0.1 ", "https://[fd77::1]:7443"]);
    assert_eq!(&*c[0].url, "https://10.77.0.1");
    assert_eq!(c[0].literal(), Some("10.77.0.1:443".parse().unwrap()));
    assert_eq!(c[1].literal(), Some("[fd77::1]:7443".parse().unwrap()));
}
