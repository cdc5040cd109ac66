//! Shared by the library's integration tests.

use gaidaros::LoopSettings;
use gaidaros::PollType;

/// Loop settings with the poll backend `GAIDAROS_TEST_POLL` names (edge
/// when unset): `scripts/test` runs these tests under each backend.
pub fn loop_settings() -> LoopSettings {
    let poll = match std::env::var("GAIDAROS_TEST_POLL") {
        Ok(name) if !name.is_empty() => name.parse::<PollType>().unwrap_or_else(|()| {
            panic!("GAIDAROS_TEST_POLL={name:?}: not edge, level or completion")
        }),
        _ => PollType::Edge,
    };
    LoopSettings {
        poll,
        ..LoopSettings::default()
    }
}
