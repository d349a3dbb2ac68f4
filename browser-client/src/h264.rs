//! H.264 in the form the protocol carries: an Annex B byte stream whose
//! key frames hold their SPS and PPS in band (what `convene stream` sends
//! and every Convene client decodes), whatever form the browser's encoder
//! emits. Chromium and Firefox honour `avc: { format: "annexb" }`; WebKit
//! ignores it and emits length-prefixed NAL units ("AVCC"), with the SPS
//! and PPS only in the `avcC` record of its `decoderConfig.description`.
//! Which form a chunk is in is read from the encoder's own output (that
//! description, or the chunk's first bytes), never guessed from the
//! browser's name. Pure byte work, so it builds and is tested natively too.

/// An Annex B start code.
const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// NAL unit type of a sequence parameter set.
const NAL_SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
const NAL_PPS: u8 = 8;

/// The form of the encoder's chunks, and what a key frame needs added.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Form {
    /// Not known yet: decided from the first chunk's bytes.
    #[default]
    Unknown,
    /// Annex B already: sent as it is.
    AnnexB,
    /// NAL units each behind a big-endian length of `length_size` bytes,
    /// with the SPS and PPS of the `avcC` record (as Annex B, start codes
    /// included) to put in front of key frames that lack them.
    Avcc {
        /// Bytes of each NAL unit's length (1, 2 or 4).
        length_size: usize,
        /// The record's SPS and PPS, each behind a start code.
        parameter_sets: Vec<u8>,
    },
}

/// Why an `avcC` record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord(pub &'static str);

impl Form {
    /// The form an encoder's `decoderConfig` states: with a `description`
    /// (an `avcC` record) the chunks are length-prefixed; without one they
    /// are Annex B (WebCodecs' AVC registration).
    pub fn from_description(description: Option<&[u8]>) -> Result<Form, BadRecord> {
        match description {
            None | Some([]) => Ok(Form::AnnexB),
            Some(record) => parse_avcc(record),
        }
    }

    /// One encoded chunk in Annex B, with the SPS and PPS in front of a key
    /// frame that does not carry them. `None` when the bytes are not in the
    /// form expected (a length running past the end): the chunk is not sent.
    pub fn to_annex_b(&mut self, chunk: &[u8], key: bool) -> Option<Vec<u8>> {
        if *self == Form::Unknown {
            // No decoderConfig seen: the bytes say. An Annex B stream starts
            // with a start code; otherwise 4-byte lengths are the one form
            // WebCodecs encoders emit, with no parameter sets to add.
            *self = if starts_with_start_code(chunk) {
                Form::AnnexB
            } else {
                Form::Avcc {
                    length_size: 4,
                    parameter_sets: Vec::new(),
                }
            };
        }
        match self {
            Form::Unknown | Form::AnnexB => Some(chunk.to_vec()),
            Form::Avcc {
                length_size,
                parameter_sets,
            } => {
                let nals = split_length_prefixed(chunk, *length_size)?;
                let has_sps = nals.iter().any(|n| nal_type(n) == Some(NAL_SPS));
                let mut out = Vec::with_capacity(chunk.len() + parameter_sets.len() + 4);
                if key && !has_sps {
                    out.extend_from_slice(parameter_sets);
                }
                for nal in nals {
                    out.extend_from_slice(&START_CODE);
                    out.extend_from_slice(nal);
                }
                Some(out)
            }
        }
    }
}

/// Whether `b` begins with a 3- or 4-byte Annex B start code.
fn starts_with_start_code(b: &[u8]) -> bool {
    b.starts_with(&[0, 0, 1]) || b.starts_with(&START_CODE)
}

/// The type of a NAL unit (its first byte's low five bits).
fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// The NAL units of a length-prefixed chunk; `None` if a length runs past
/// the end or the length size is not 1, 2 or 4.
fn split_length_prefixed(mut b: &[u8], length_size: usize) -> Option<Vec<&[u8]>> {
    if !matches!(length_size, 1 | 2 | 4) {
        return None;
    }
    let mut nals = Vec::new();
    while !b.is_empty() {
        let (len, rest) = b.split_at_checked(length_size)?;
        let len = len
            .iter()
            .fold(0usize, |n, byte| n << 8 | usize::from(*byte));
        let (nal, rest) = rest.split_at_checked(len)?;
        if !nal.is_empty() {
            nals.push(nal);
        }
        b = rest;
    }
    Some(nals)
}

/// Reads an `AVCDecoderConfigurationRecord` (ISO/IEC 14496-15 §5.3.3.1):
/// its NAL length size and its SPS and PPS, made into Annex B.
fn parse_avcc(record: &[u8]) -> Result<Form, BadRecord> {
    let take = |b: &mut &[u8], n: usize, what: &'static str| -> Result<Vec<u8>, BadRecord> {
        let (head, rest) = b.split_at_checked(n).ok_or(BadRecord(what))?;
        *b = rest;
        Ok(head.to_vec())
    };
    let mut b = record;
    let head = take(&mut b, 6, "shorter than its header")?;
    if head[0] != 1 {
        return Err(BadRecord("configurationVersion is not 1"));
    }
    let length_size = usize::from(head[4] & 0x03) + 1;
    if length_size == 3 {
        return Err(BadRecord("a NAL length of 3 bytes"));
    }
    let mut parameter_sets = Vec::new();
    let mut read_sets = |b: &mut &[u8], count: usize| -> Result<(), BadRecord> {
        for _ in 0..count {
            let len = take(b, 2, "a parameter set's length runs past the end")?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let set = take(b, len, "a parameter set runs past the end")?;
            parameter_sets.extend_from_slice(&START_CODE);
            parameter_sets.extend_from_slice(&set);
        }
        Ok(())
    };
    read_sets(&mut b, usize::from(head[5] & 0x1f))?;
    let pps = take(&mut b, 1, "no PPS count")?;
    read_sets(&mut b, usize::from(pps[0]))?;
    let has = |t: u8| {
        parameter_sets
            .windows(5)
            .any(|w| w[..4] == START_CODE && w[4] & 0x1f == t)
    };
    if !has(NAL_SPS) || !has(NAL_PPS) {
        return Err(BadRecord("no SPS or no PPS"));
    }
    Ok(Form::Avcc {
        length_size,
        parameter_sets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];
    const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x00, 0x33];
    const SLICE: &[u8] = &[0x41, 0x9a, 0x02, 0x01];

    /// An avcC record with one SPS and one PPS and 4-byte NAL lengths.
    fn record() -> Vec<u8> {
        let mut r = vec![1, 0x42, 0xc0, 0x1f, 0xff, 0xe1];
        r.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
        r.extend_from_slice(SPS);
        r.push(1);
        r.extend_from_slice(&(PPS.len() as u16).to_be_bytes());
        r.extend_from_slice(PPS);
        r
    }

    fn prefixed(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| {
                let mut v = (n.len() as u32).to_be_bytes().to_vec();
                v.extend_from_slice(n);
                v
            })
            .collect()
    }

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| [&START_CODE[..], n].concat())
            .collect()
    }

    #[test]
    fn a_description_means_length_prefixed_chunks_whose_key_frames_get_the_parameter_sets() {
        let mut form = Form::from_description(Some(&record())).unwrap();
        assert_eq!(
            form.to_annex_b(&prefixed(&[IDR]), true).unwrap(),
            annex_b(&[SPS, PPS, IDR])
        );
        // Delta frames get start codes and nothing else.
        assert_eq!(
            form.to_annex_b(&prefixed(&[SLICE, SLICE]), false).unwrap(),
            annex_b(&[SLICE, SLICE])
        );
    }

    #[test]
    fn a_key_frame_that_carries_its_own_parameter_sets_gets_no_second_copy() {
        let mut form = Form::from_description(Some(&record())).unwrap();
        assert_eq!(
            form.to_annex_b(&prefixed(&[SPS, PPS, IDR]), true).unwrap(),
            annex_b(&[SPS, PPS, IDR])
        );
    }

    #[test]
    fn the_records_length_size_is_used() {
        let mut r = record();
        r[4] = 0xfd; // lengthSizeMinusOne = 1: two-byte lengths
        let mut form = Form::from_description(Some(&r)).unwrap();
        let mut chunk = (SLICE.len() as u16).to_be_bytes().to_vec();
        chunk.extend_from_slice(SLICE);
        assert_eq!(form.to_annex_b(&chunk, false).unwrap(), annex_b(&[SLICE]));
    }

    #[test]
    fn no_description_means_annex_b_passed_through() {
        let mut form = Form::from_description(None).unwrap();
        let chunk = annex_b(&[SPS, PPS, IDR]);
        assert_eq!(form.to_annex_b(&chunk, true).unwrap(), chunk);
        assert_eq!(Form::from_description(Some(&[])).unwrap(), Form::AnnexB);
    }

    #[test]
    fn without_a_decoder_config_the_first_bytes_decide() {
        let mut form = Form::Unknown;
        let chunk = annex_b(&[SLICE]);
        assert_eq!(form.to_annex_b(&chunk, false).unwrap(), chunk);
        assert_eq!(form, Form::AnnexB);
        let mut form = Form::Unknown;
        assert_eq!(
            form.to_annex_b(&prefixed(&[SLICE]), false).unwrap(),
            annex_b(&[SLICE])
        );
        assert!(matches!(form, Form::Avcc { length_size: 4, .. }));
    }

    #[test]
    fn a_length_past_the_end_drops_the_chunk() {
        let mut form = Form::from_description(Some(&record())).unwrap();
        let mut chunk = prefixed(&[SLICE]);
        chunk[3] += 1;
        assert_eq!(form.to_annex_b(&chunk, false), None);
    }

    #[test]
    fn broken_records_are_refused() {
        let r = record();
        assert!(Form::from_description(Some(&r[..3])).is_err());
        assert!(Form::from_description(Some(&r[..r.len() - 1])).is_err());
        let mut v2 = r.clone();
        v2[0] = 2;
        assert!(Form::from_description(Some(&v2)).is_err());
        // No PPS.
        let mut no_pps = r[..8 + SPS.len()].to_vec();
        no_pps.push(0);
        assert_eq!(
            Form::from_description(Some(&no_pps)),
            Err(BadRecord("no SPS or no PPS"))
        );
    }
}
