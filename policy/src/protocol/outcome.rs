//! How a host of a rollout ended ([`HostOutcome`], what the wave reports and the operator
//! sees) and where it stands in its rollout ([`HostState`], the stored per-host state),
//! each with its one spelling (snake_case): `as_str` and `FromStr` here are the only
//! places that spell them. `portcullis-proto` converts [`HostOutcome`] to and from the
//! wire enum.
//!
//! Two types, not one: a state also names the steps before an outcome (`pending`,
//! `sent`, `applied` while waiting for the host back) and the ones after the wave
//! (`interrupted`, `rollback_failed`), and it keeps what the rollout's arithmetic needs:
//! an `applied` or `confirmed` host both count as `confirmed` (it runs the revision), a
//! `disconnected` one as `failed`. An outcome is what the wave said of the host, as sent
//! to the operator.

/// A spelling that names none of the values of `what`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {found:?}")]
pub struct UnknownSpelling {
    pub what: &'static str,
    pub found: String,
}

/// `as_str`, `ALL`, `FromStr` and `Display` of a fieldless enum from its one spelling table.
macro_rules! spelled {
    ($ty:ident, $what:literal, { $($variant:ident => $s:literal,)+ }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant,)+];

            /// The one spelling (stored, printed, in JSON).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $s,)+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::protocol::outcome::UnknownSpelling;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::protocol::outcome::UnknownSpelling {
                        what: $what,
                        found: s.to_owned(),
                    })
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}
pub(crate) use spelled;

/// How one host of an apply or a rollout wave ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostOutcome {
    /// Applied with the expected hash (no confirmation asked for).
    Applied,
    /// Applied, back through the new rules, `Confirm` handed over.
    Confirmed,
    /// The agent reported an error, or the controller gave up waiting for `Applied`.
    Failed,
    /// Applied, but the kernel holds another hash than the expected one.
    HashMismatch,
    /// Its session closed before the revision could be sent.
    Disconnected,
    /// The agent reverted the revision (its deadline, or a `Revert`), or came back on
    /// another one.
    Reverted,
    /// Not connected when its wave started.
    Offline,
    /// Not back through the new rules (or not confirmed) before the give-up time.
    Unconfirmed,
    /// Back on its previous revision after the rollout halted.
    RolledBack,
    /// Confirmed, then failed a health gate.
    GateFailed,
    /// Not sent: the rollout was aborted before its turn.
    Skipped,
}

spelled!(HostOutcome, "host outcome", {
    Applied => "applied",
    Confirmed => "confirmed",
    Failed => "failed",
    HashMismatch => "hash_mismatch",
    Disconnected => "disconnected",
    Reverted => "reverted",
    Offline => "offline",
    Unconfirmed => "unconfirmed",
    RolledBack => "rolled_back",
    GateFailed => "gate_failed",
    Skipped => "skipped",
});

impl HostOutcome {
    /// The host runs the revision (applied, or confirmed).
    pub fn is_ok(self) -> bool {
        matches!(self, Self::Applied | Self::Confirmed)
    }
}

/// Where a host stands in its rollout (the stored per-host state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostState {
    /// Targeted; its wave has not started.
    Pending,
    /// `Desired` sent (staged); waiting for `Applied`.
    Sent,
    /// Applied under commit-confirmed; waiting for the host back through its new rules.
    Applied,
    /// Runs the revision (applied, or confirmed).
    Confirmed,
    Failed,
    HashMismatch,
    Reverted,
    Offline,
    Unconfirmed,
    RolledBack,
    /// Could not be put back on its previous revision after the rollout halted.
    RollbackFailed,
    GateFailed,
    Skipped,
    /// The controller stopped while the host was in flight.
    Interrupted,
}

spelled!(HostState, "rollout host state", {
    Pending => "pending",
    Sent => "sent",
    Applied => "applied",
    Confirmed => "confirmed",
    Failed => "failed",
    HashMismatch => "hash_mismatch",
    Reverted => "reverted",
    Offline => "offline",
    Unconfirmed => "unconfirmed",
    RolledBack => "rolled_back",
    RollbackFailed => "rollback_failed",
    GateFailed => "gate_failed",
    Skipped => "skipped",
    Interrupted => "interrupted",
});

impl HostState {
    /// Sent and not settled: a wave still drives the host.
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Sent | Self::Applied)
    }
}

impl From<HostOutcome> for HostState {
    /// The state a settled host is stored with.
    fn from(o: HostOutcome) -> Self {
        match o {
            HostOutcome::Applied | HostOutcome::Confirmed => Self::Confirmed,
            HostOutcome::Failed | HostOutcome::Disconnected => Self::Failed,
            HostOutcome::HashMismatch => Self::HashMismatch,
            HostOutcome::Reverted => Self::Reverted,
            HostOutcome::Offline => Self::Offline,
            HostOutcome::Unconfirmed => Self::Unconfirmed,
            HostOutcome::RolledBack => Self::RolledBack,
            HostOutcome::GateFailed => Self::GateFailed,
            HostOutcome::Skipped => Self::Skipped,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_is_snake_case_and_round_trips() {
        let spellings = HostOutcome::ALL
            .iter()
            .map(|o| {
                (
                    o.as_str(),
                    o.as_str().parse::<HostOutcome>().map(|p| p == *o),
                )
            })
            .chain(
                HostState::ALL
                    .iter()
                    .map(|s| (s.as_str(), s.as_str().parse::<HostState>().map(|p| p == *s))),
            );
        for (s, back) in spellings {
            assert_eq!(back, Ok(true), "{s}");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
        }
        assert_eq!(HostOutcome::ALL.len(), 11);
        assert_eq!(HostState::ALL.len(), 14);
    }

    #[test]
    fn unknown_and_kebab_spellings_are_refused() {
        let e = "rolled-back".parse::<HostOutcome>().unwrap_err();
        assert_eq!(e.to_string(), "unknown host outcome \"rolled-back\"");
        assert!("hash-mismatch".parse::<HostState>().is_err());
        assert!("".parse::<HostState>().is_err());
    }

    #[test]
    fn settled_states_keep_the_stored_spelling() {
        let stored = |o: HostOutcome| HostState::from(o).as_str();
        assert_eq!(stored(HostOutcome::Applied), "confirmed");
        assert_eq!(stored(HostOutcome::Confirmed), "confirmed");
        assert_eq!(stored(HostOutcome::Disconnected), "failed");
        assert_eq!(stored(HostOutcome::RolledBack), "rolled_back");
        // Every other outcome is stored under its own spelling.
        for o in HostOutcome::ALL {
            if !matches!(
                o,
                HostOutcome::Applied | HostOutcome::Confirmed | HostOutcome::Disconnected
            ) {
                assert_eq!(stored(*o), o.as_str());
            }
            assert!(!HostState::from(*o).in_flight());
        }
        assert!(HostState::Sent.in_flight() && HostState::Applied.in_flight());
    }

    #[test]
    fn serialized_as_the_spelling() {
        let v = serde_json::to_value([HostState::RollbackFailed]).unwrap();
        assert_eq!(v, serde_json::json!(["rollback_failed"]));
        let v = serde_json::to_value(HostOutcome::GateFailed).unwrap();
        assert_eq!(v, serde_json::json!("gate_failed"));
    }
}
