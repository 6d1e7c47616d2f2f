//! Incremental Internet checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
//!
//! Values are taken exactly as they sit in the packet (network order, read as native
//! integers). A one's complement sum is independent of byte order as long as every word is
//! read the same way, so no byte swapping is needed.

/// Folds a 32-bit one's complement accumulator into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after one 16-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// The checksum after one 32-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!check)
        + u32::from(!(old as u16))
        + u32::from(!((old >> 16) as u16))
        + u32::from(new as u16)
        + u32::from((new >> 16) as u16);
    !fold(sum)
}

/// What a 16-bit word's change from `old` to `new` adds to a checksum: a one's complement
/// sum, to add up with others and [`apply`] at once (fewer steps than one update a field
/// where a rewrite changes many: an IPv6 address has eight words).
#[inline(always)]
pub fn diff2(old: u16, new: u16) -> u32 {
    u32::from(!old) + u32::from(new)
}

/// [`diff2`] for a 32-bit word.
#[inline(always)]
pub fn diff4(old: u32, new: u32) -> u32 {
    diff2(old as u16, new as u16) + diff2((old >> 16) as u16, (new >> 16) as u16)
}

/// The checksum after the changes summed up in `diff` (of [`diff2`] and [`diff4`]).
#[inline(always)]
pub fn apply(check: u16, diff: u32) -> u16 {
    let sum = u64::from(!check) + u64::from(diff);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    !fold(sum as u32)
}

/// The UDP checksum field value that means "no checksum"; it must stay untouched.
pub const UDP_NO_CHECKSUM: u16 = 0;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Full checksum over `data` (16-bit words in memory order), for checking the
    /// incremental updates.
    pub fn full(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for chunk in data.chunks(2) {
            let word = if chunk.len() == 2 {
                u16::from_ne_bytes([chunk[0], chunk[1]])
            } else {
                u16::from_ne_bytes([chunk[0], 0])
            };
            sum += u32::from(word);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !fold(sum)
    }

    #[test]
    fn summed_diffs_match_one_update_per_word() {
        let mut data = *b"\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x35";
        let check = full(&data);
        let new = *b"\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x11\x51";
        let mut diff = 0;
        for i in 0..4 {
            let word = |d: &[u8; 18]| u32::from_ne_bytes(d[4 * i..4 * i + 4].try_into().unwrap());
            diff += diff4(word(&data), word(&new));
        }
        diff += diff2(
            u16::from_ne_bytes([data[16], data[17]]),
            u16::from_ne_bytes([new[16], new[17]]),
        );
        data = new;
        assert_eq!(apply(check, diff), full(&data));
        assert_eq!(apply(check, 0), check, "no change");
    }

    #[test]
    fn replace4_matches_full_recompute() {
        let mut data =
            *b"\x45\x00\x00\x3c\x1c\x46\x40\x00\x40\x06\x00\x00\xac\x10\x0a\x63\xac\x10\x0a\x0c";
        let check = full(&data);
        data[10..12].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(full(&data), 0, "a header with its checksum sums to zero");

        let old = u32::from_ne_bytes(data[16..20].try_into().unwrap());
        let new = u32::from_ne_bytes([172, 17, 0, 2]);
        data[16..20].copy_from_slice(&new.to_ne_bytes());
        let updated = replace4(check, old, new);
        data[10..12].copy_from_slice(&updated.to_ne_bytes());
        assert_eq!(full(&data), 0);
    }

    proptest::proptest! {
        #[test]
        fn incremental_updates_equal_recompute(
            mut data in proptest::collection::vec(proptest::prelude::any::<u8>(), 24..64),
            new4 in proptest::prelude::any::<u32>(),
            new2 in proptest::prelude::any::<u16>(),
        ) {
            // Bytes 0..2 hold the checksum; the rest is covered data.
            data[0] = 0;
            data[1] = 0;
            let check = full(&data);
            data[0..2].copy_from_slice(&check.to_ne_bytes());

            let old4 = u32::from_ne_bytes(data[4..8].try_into().unwrap());
            data[4..8].copy_from_slice(&new4.to_ne_bytes());
            let check = replace4(check, old4, new4);
            let old2 = u16::from_ne_bytes(data[10..12].try_into().unwrap());
            data[10..12].copy_from_slice(&new2.to_ne_bytes());
            let check = replace2(check, old2, new2);
            data[0..2].copy_from_slice(&check.to_ne_bytes());
            // 0x0000 and 0xffff are the same number in one's complement.
            let verify = full(&data);
            proptest::prop_assert!(verify == 0 || verify == 0xffff, "verify={verify:#x}");
        }
    }
}
