//! Inputs from the fuzzers' sessions (`fuzz/`, see fuzz/README.md), replayed on stable in the
//! normal suite: every crash or hang a fuzzer finds lands here, next to a handful of corpus
//! inputs that reach deep into the decoder and the config parser.
//!
//! `tests/data/fuzz/decoder/NAME.stomp` holds the bytes as they arrive on a socket, and
//! `NAME.expect` how they are decoded: a first line with the settings
//! (`limits=C,H,N,F|default version=1.0|1.1|1.2 negotiate=yes|no`, as the fuzz target chooses
//! them), then one line per item and a last line with the error that ended the stream or what
//! was left pending. The bytes are decoded whole, one byte at a time and split in two
//! everywhere, which must all agree, and each frame must survive `encode` and decode again.
//!
//! `tests/data/fuzz/config/NAME.conf` is a config file (the text part of a fuzz input, without
//! its environment part); `NAME.expect` holds `ok` or the start of the error (an unknown key's
//! error goes on to list every known key, a list that grows with new keys).

use hamq::codec::{encode, DecodeError, Decoded, Decoder, Frame, Limits, Version};
use hamq::config::Config;
use std::fs;
use std::path::{Path, PathBuf};

struct Settings {
    limits: Limits,
    version: Version,
    negotiate: bool,
}

fn parse_settings(line: &str) -> Settings {
    let mut settings = Settings {
        limits: Limits::default(),
        version: Version::V1_2,
        negotiate: false,
    };
    for word in line.split_whitespace() {
        match word.split_once('=') {
            Some(("limits", "default")) => {}
            Some(("limits", list)) => {
                let n: Vec<usize> = list
                    .split(',')
                    .map(|n| n.parse().expect("a limit"))
                    .collect();
                settings.limits = Limits {
                    max_command_line: n[0],
                    max_header_line: n[1],
                    max_headers: n[2],
                    max_frame: n[3],
                    max_send: n.get(4).copied().unwrap_or(usize::MAX),
                };
            }
            Some(("version", v)) => {
                settings.version = match v {
                    "1.0" => Version::V1_0,
                    "1.1" => Version::V1_1,
                    _ => Version::V1_2,
                }
            }
            Some(("negotiate", yes)) => settings.negotiate = yes == "yes",
            _ => panic!("unknown setting {word:?}"),
        }
    }
    settings
}

/// Items (with the version in force for each) and the error that ended the run, if any.
type Run = (Vec<(Decoded, Version)>, Option<DecodeError>, usize);

/// Decodes `chunks` as a session would: the version switches after CONNECT when negotiating.
fn run<'a>(settings: &Settings, chunks: impl Iterator<Item = &'a [u8]>) -> Run {
    let mut version = if settings.negotiate {
        Version::V1_0
    } else {
        settings.version
    };
    let mut decoder = Decoder::new(settings.limits);
    decoder.set_version(version);
    let mut items = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk);
        loop {
            match decoder.decode() {
                Ok(Some(item)) => {
                    if let Decoded::Frame(f) = &item {
                        if settings.negotiate && matches!(f.command.as_str(), "CONNECT" | "STOMP") {
                            version = settings.version;
                            decoder.set_version(version);
                        }
                    }
                    items.push((item, version));
                }
                Ok(None) => break,
                Err(e) => return (items, Some(e), decoder.buffered()),
            }
        }
    }
    let buffered = decoder.buffered();
    (items, None, buffered)
}

fn describe(run: &Run) -> Vec<String> {
    let mut lines: Vec<String> = run
        .0
        .iter()
        .map(|(item, _)| match item {
            Decoded::HeartBeat => "heartbeat".to_string(),
            Decoded::Frame(f) => format!(
                "frame {:?} {:?} body {:?}",
                f.command,
                f.headers,
                f.body.escape_ascii().to_string()
            ),
        })
        .collect();
    lines.push(match &run.1 {
        Some(e) => format!("error: {e}"),
        None => format!("pending {} bytes", run.2),
    });
    lines
}

/// Chunked runs agree with the whole run, except in how much of a body without content-length
/// had arrived when it went over the limit.
fn same_outcome(a: &Run, b: &Run) -> bool {
    let errors = match (&a.1, &b.1) {
        (
            Some(DecodeError::BodyTooLarge { limit: x, .. }),
            Some(DecodeError::BodyTooLarge { limit: y, .. }),
        ) => x == y,
        (x, y) => x == y,
    };
    a.0 == b.0 && errors
}

/// `encode` writes a frame back as bytes that decode to the same frame, unless it holds a CR
/// that its version cannot represent (no escaping in 1.0 and in CONNECT).
fn check_round_trip(frame: &Frame, version: Version, name: &str) {
    let raw = version == Version::V1_0 || matches!(frame.command.as_str(), "CONNECT" | "STOMP");
    let cr = |s: &String| s.contains('\r');
    if cr(&frame.command) || (raw && frame.headers.iter().any(|(n, v)| cr(n) || cr(v))) {
        return;
    }
    let mut bytes = Vec::new();
    encode(frame, version, &mut bytes);
    let mut decoder = Decoder::new(Limits {
        max_command_line: usize::MAX,
        max_header_line: usize::MAX,
        max_headers: usize::MAX,
        max_frame: usize::MAX,
        max_send: usize::MAX,
    });
    decoder.set_version(version);
    decoder.feed(&bytes);
    assert_eq!(
        decoder.decode(),
        Ok(Some(Decoded::Frame(frame.clone()))),
        "{name}: round trip"
    );
}

/// The `NAME.EXT` files of `tests/data/fuzz/DIR`, sorted, with at least one present.
fn inputs(dir: &str, ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .{ext} files in {}", dir.display());
    files
}

fn read_expect(input: &Path) -> String {
    let path = input.with_extension("expect");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn decoder_inputs_decode_as_expected_however_split() {
    for path in inputs("decoder", "stomp") {
        let name = path.display().to_string();
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expect = read_expect(&path);
        let (first, expected) = expect.split_once('\n').expect("a settings line");
        let settings = parse_settings(first);
        let whole = run(&settings, std::iter::once(bytes.as_slice()));
        let got = describe(&whole);
        let expected: Vec<&str> = expected.lines().collect();
        assert_eq!(got, expected, "{name}: got\n{}", got.join("\n"));
        let bytewise = run(&settings, bytes.chunks(1));
        assert!(same_outcome(&whole, &bytewise), "{name}: byte by byte");
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            let split = run(&settings, [a, b].into_iter());
            assert!(same_outcome(&whole, &split), "{name}: split at {at}");
        }
        for (item, version) in &whole.0 {
            if let Decoded::Frame(frame) = item {
                check_round_trip(frame, *version, &name);
            }
        }
    }
}

#[test]
fn config_inputs_parse_as_expected() {
    for path in inputs("config", "conf") {
        let name = path.display().to_string();
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = match Config::parse(&text, "fuzz.conf", Vec::new()) {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        let expected = read_expect(&path);
        let expected = expected.trim_end();
        assert!(
            got.starts_with(expected),
            "{name}: got {got:?}, expected {expected:?}"
        );
    }
}
