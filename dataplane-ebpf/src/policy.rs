//! Source filters on published ports (what Docker users put in DOCKER-USER): the longest
//! matching prefix decides, rules scoped to the published port first, then rules for every
//! published port; no matching rule allows.

use aya_ebpf::maps::lpm_trie::Key;
use dataplane_common::{FILTER_DENY, FILTER_SCOPE_BITS, FilterKey};

use crate::{maps::FILTER_RULES, stats::count_filter_hit};

/// Whether a packet from `src_be` to published `host_port_be`/`proto` may pass. Counts the
/// hit on the rule that decided.
#[inline(always)]
pub fn source_allowed(src_be: u32, host_port_be: u16, proto: u8, bytes: usize) -> bool {
    let full = FILTER_SCOPE_BITS + 32;
    let scoped = Key::new(
        full,
        FilterKey {
            host_port_be,
            proto,
            _pad: 0,
            src_ip_be: src_be,
        },
    );
    let global = Key::new(
        full,
        FilterKey {
            host_port_be: 0,
            proto: 0,
            _pad: 0,
            src_ip_be: src_be,
        },
    );
    let rule = FILTER_RULES
        .get(&scoped)
        .or_else(|| FILTER_RULES.get(&global));
    match rule {
        Some(rule) => {
            count_filter_hit(rule.rule_id, bytes);
            rule.action != FILTER_DENY
        }
        None => true,
    }
}
