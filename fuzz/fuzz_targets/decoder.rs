//! Fuzz target: the STOMP frame decoder (`hamq::codec::Decoder`) and `encode`.
//!
//! The input's first 10 bytes choose the settings, the rest is the byte stream (raw, so that
//! the dictionary `stomp.dict` and libFuzzer's comparisons work on it directly):
//! - byte 0: bit 0 small limits (else the broker's defaults), bit 1 negotiate (start as 1.0 and
//!   switch after the first CONNECT/STOMP, as a session does), bits 2-3 the version (mod 3),
//!   bit 4 (with bit 0) a store bound on SENDs (`max_send`) as well;
//! - bytes 1-5: the small limits, each + 1 (command line, header line, headers: one byte each;
//!   body: two bytes, little-endian);
//! - bytes 6-9: chunk sizes the stream arrives in, cycled (0 means 1).
//!
//! Checked for every input:
//! - no panic, and errors are sticky;
//! - the same items (frames, heart-beats) and the same final error whatever the chunking;
//! - whenever the decoder asks for more bytes, it buffers no more than the limits allow;
//! - every decoded frame encodes back (same version) to bytes that decode to that very frame,
//!   unless it holds a CR that the version cannot represent (1.0 or CONNECT headers, command);
//! - encoded for any version as the broker sends it (content-length first), every frame decodes
//!   to exactly one frame with the same body and header count: no header or frame injection.
#![no_main]

use hamq::codec::{encode, DecodeError, Decoded, Decoder, Frame, Limits, Version};
use libfuzzer_sys::fuzz_target;

/// The settings from the input's first 10 bytes (see the top of this file) and the stream.
struct Input<'a> {
    limits: Limits,
    version: Version,
    negotiate: bool,
    chunks: [u8; 4],
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Input<'a> {
        let mut head = [0u8; 10];
        let n = data.len().min(head.len());
        head[..n].copy_from_slice(&data[..n]);
        let limits = if head[0] & 1 == 1 {
            let max_frame = usize::from(u16::from_le_bytes([head[4], head[5]])) + 1;
            Limits {
                max_command_line: usize::from(head[1]) + 1,
                max_header_line: usize::from(head[2]) + 1,
                max_headers: usize::from(head[3]) + 1,
                max_frame,
                // Bit 4: a store bound on SENDs too, tighter than the frame's or not.
                max_send: match head[0] & 16 {
                    0 => usize::MAX,
                    _ => max_frame / 2 + usize::from(head[3]),
                },
            }
        } else {
            Limits::default()
        };
        Input {
            limits,
            version: VERSIONS[usize::from(head[0] >> 2 & 3) % VERSIONS.len()],
            negotiate: head[0] & 2 == 2,
            chunks: [head[6], head[7], head[8], head[9]],
            bytes: &data[n..],
        }
    }
}

const VERSIONS: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

/// Everything one run yields: items with the version in force when each was decoded, and the
/// error that ended it, if any.
struct Run {
    items: Vec<(Decoded, Version)>,
    error: Option<DecodeError>,
}

fn run<'a>(input: &Input, chunks: impl Iterator<Item = &'a [u8]>) -> Run {
    let limits = input.limits;
    let target = input.version;
    let mut version = if input.negotiate {
        Version::V1_0
    } else {
        target
    };
    let mut decoder = Decoder::new(limits);
    decoder.set_version(version);
    // A trailing CR is held back from the line limit until its LF shows up.
    let bound = (limits.max_command_line + 1)
        .max(limits.max_header_line + 1)
        .max(limits.max_frame);
    let mut items = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk);
        loop {
            match decoder.decode() {
                Ok(Some(item)) => {
                    if let Decoded::Frame(f) = &item {
                        if input.negotiate && matches!(f.command.as_str(), "CONNECT" | "STOMP") {
                            version = target;
                            decoder.set_version(version);
                        }
                    }
                    items.push((item, version));
                }
                Ok(None) => {
                    assert!(
                        decoder.buffered() <= bound,
                        "buffered {} > {bound}",
                        decoder.buffered()
                    );
                    break;
                }
                Err(e) => {
                    decoder.feed(b"SEND\n\n\0");
                    assert_eq!(decoder.decode(), Err(e.clone()), "error not sticky");
                    return Run {
                        items,
                        error: Some(e),
                    };
                }
            }
        }
    }
    Run { items, error: None }
}

/// Errors equal, except the length of a body without content-length, which is how much had
/// arrived when the limit was seen.
fn same_error(a: &Option<DecodeError>, b: &Option<DecodeError>) -> bool {
    match (a, b) {
        (
            Some(DecodeError::BodyTooLarge { limit: x, .. }),
            Some(DecodeError::BodyTooLarge { limit: y, .. }),
        ) => x == y,
        _ => a == b,
    }
}

fn decode_all(bytes: &[u8], version: Version) -> Result<Vec<Decoded>, DecodeError> {
    let mut decoder = Decoder::new(Limits {
        max_command_line: usize::MAX,
        max_header_line: usize::MAX,
        max_headers: usize::MAX,
        max_frame: usize::MAX,
        max_send: usize::MAX,
    });
    decoder.set_version(version);
    decoder.feed(bytes);
    let mut out = Vec::new();
    while let Some(item) = decoder.decode()? {
        out.push(item);
    }
    Ok(out)
}

fn escapes(command: &str, version: Version) -> bool {
    version >= Version::V1_1 && !matches!(command, "CONNECT" | "CONNECTED" | "STOMP")
}

fn check_round_trip(frame: &Frame, version: Version) {
    let raw = !escapes(&frame.command, version);
    let has_cr = |s: &str| s.contains('\r');
    let representable = !has_cr(&frame.command)
        && !(raw && frame.headers.iter().any(|(n, v)| has_cr(n) || has_cr(v)));
    if representable {
        let mut bytes = Vec::new();
        encode(frame, version, &mut bytes);
        let back = decode_all(&bytes, version);
        assert_eq!(back, Ok(vec![Decoded::Frame(frame.clone())]), "{version:?}");
    }
    for other in VERSIONS {
        let mut sent = Frame::new(&frame.command)
            .with_header("content-length", &frame.body.len().to_string())
            .with_body(frame.body.clone());
        sent.headers.extend(frame.headers.iter().cloned());
        let mut bytes = Vec::new();
        encode(&sent, other, &mut bytes);
        let back = decode_all(&bytes, other).unwrap_or_else(|e| panic!("{other:?}: {e}"));
        let [Decoded::Frame(got)] = back.as_slice() else {
            panic!("{other:?}: {back:?}")
        };
        assert_eq!(got.body, sent.body, "{other:?}");
        assert_eq!(got.headers.len(), sent.headers.len(), "{other:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let whole = run(&input, std::iter::once(input.bytes));
    let mut rest = input.bytes;
    let mut sizes = input.chunks.iter().cycle();
    let chunked = run(
        &input,
        std::iter::from_fn(|| {
            if rest.is_empty() {
                return None;
            }
            let size = sizes.next().map_or(rest.len(), |&n| usize::from(n).max(1));
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            Some(chunk)
        }),
    );
    assert_eq!(whole.items, chunked.items, "items differ by chunking");
    assert!(
        same_error(&whole.error, &chunked.error),
        "errors differ by chunking: {:?} vs {:?}",
        whole.error,
        chunked.error
    );
    for (item, version) in &whole.items {
        if let Decoded::Frame(frame) = item {
            check_round_trip(frame, *version);
        }
    }
});
