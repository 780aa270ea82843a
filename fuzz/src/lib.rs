//! # locus-fuzz — fuzz targets that run on stable Rust, under `cargo test`
//!
//! A small coverage-free mutation fuzzer. Enters: a target (a name, seed inputs, a dictionary of
//! interesting tokens and a check function over bytes). Leaves: a passing run, or a failed test
//! that prints the crashing input as hex and writes it to `fuzz/crashes/`.
//!
//! Without coverage instrumentation (cargo-fuzz needs nightly), the check function reports an
//! [`Outcome`] signature instead, such as "parsed" or "refused: malformed": an input that reaches
//! a signature not seen before joins the corpus, so mutations build on inputs that got further.
//!
//! Each run:
//! 1. replays every file in `fuzz/regressions/<target>/` (crashers found before, kept after the
//!    fix) and every seed;
//! 2. mutates for `LOCUS_FUZZ_SECONDS` (default 2): half the time from a fixed seed, half from a
//!    random one, both printed; `LOCUS_FUZZ_SEED=N` uses `N` for the whole time instead.
//!
//! A panic in the check function is a crash: the run stops and the test fails.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The fixed seed runs start from (the second half of a run uses a random one).
pub const DEFAULT_SEED: u64 = 0x10C0_5F22;

/// Default time per target, seconds, when `LOCUS_FUZZ_SECONDS` is not set: short, so that
/// `cargo test --workspace` stays quick. `scripts/test.sh` runs each target for 30.
pub const DEFAULT_SECONDS: f64 = 2.0;

/// Longest input the mutator builds.
pub const MAX_INPUT_LEN: usize = 4096;

/// Most inputs kept in the corpus (seeds included).
const MAX_CORPUS: usize = 512;

/// What a check function says about one input: a short signature of how far it got
/// (`"refused:malformed"`, `"accepted:2 fixes"`). New signatures grow the corpus. Keep the set
/// of signatures small (no values that vary freely), or the corpus fills with noise.
pub type Outcome = String;

/// A target's check: runs the code under test on one input, panics on a broken promise.
pub type Check<'a> = Box<dyn Fn(&[u8]) -> Outcome + 'a>;

/// One fuzz target.
#[allow(missing_debug_implementations)] // holds a closure
pub struct Target<'a> {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    dictionary: Vec<Vec<u8>>,
    check: Check<'a>,
}

impl<'a> Target<'a> {
    /// A target named `name` (also its folder under `fuzz/regressions/`).
    pub fn new(name: &'static str, check: impl Fn(&[u8]) -> Outcome + 'a) -> Self {
        Target { name, seeds: Vec::new(), dictionary: Vec::new(), check: Box::new(check) }
    }

    /// Adds seed inputs.
    pub fn seeds<I: AsRef<[u8]>>(mut self, seeds: impl IntoIterator<Item = I>) -> Self {
        self.seeds.extend(seeds.into_iter().map(|s| s.as_ref().to_vec()));
        self
    }

    /// Adds tokens the mutator inserts or overwrites with (field names, numbers at the edges).
    pub fn dictionary<I: AsRef<[u8]>>(mut self, tokens: impl IntoIterator<Item = I>) -> Self {
        self.dictionary.extend(tokens.into_iter().map(|s| s.as_ref().to_vec()));
        self
    }

    /// Runs the target as configured by the environment; panics (failing the test) on a crash.
    pub fn run(self) {
        let seconds = std::env::var("LOCUS_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(DEFAULT_SECONDS);
        let budget = Duration::from_secs_f64(seconds);
        let fixed = std::env::var("LOCUS_FUZZ_SEED").ok().and_then(|s| parse_seed(&s));
        let plan: Vec<(u64, Duration)> = match fixed {
            Some(seed) => vec![(seed, budget)],
            None => vec![(DEFAULT_SEED, budget / 2), (random_seed(), budget / 2)],
        };
        let mut fuzzer = Fuzzer::new(self);
        fuzzer.replay_regressions();
        fuzzer.replay_seeds();
        for (seed, time) in plan {
            eprintln!(
                "fuzz {}: seed {seed} for {:.1}s (reproduce with LOCUS_FUZZ_SEED={seed})",
                fuzzer.target.name,
                time.as_secs_f64()
            );
            fuzzer.mutate_for(seed, time);
        }
        eprintln!(
            "fuzz {}: {} inputs, {} outcomes seen, corpus {}",
            fuzzer.target.name,
            fuzzer.executions,
            fuzzer.outcomes.len(),
            fuzzer.corpus.len()
        );
    }
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// A seed from the clock and the process: different on every run, printed for reproduction.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = Rng(nanos ^ (u64::from(std::process::id()) << 32));
    rng.next_u64()
}

/// splitmix64: small, fast, and deterministic for a seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability 1/`n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Integers at the edges of the wire's types, as the bytes the mutator writes: raw
/// little-endian, and LEB128 varints (zigzag for the signed ones), since the wire is postcard.
fn interesting_integers() -> Vec<Vec<u8>> {
    let unsigned: [u64; 14] = [
        0,
        1,
        100,
        101,
        127,
        128,
        255,
        35_999,
        36_000,
        u16::MAX as u64,
        900_000_000,
        u32::MAX as u64,
        1_763_700_000_000,
        u64::MAX,
    ];
    let signed: [i64; 6] =
        [-1, i32::MIN as i64, i32::MAX as i64, -900_000_001, 1_800_000_001, -1_800_000_001];
    let mut out = Vec::new();
    for v in unsigned {
        out.push(varint(v));
        out.push(v.to_le_bytes()[..byte_width(v)].to_vec());
    }
    for v in signed {
        out.push(varint(((v << 1) ^ (v >> 63)) as u64));
    }
    // Over-long and unterminated varints.
    out.push(vec![0x80, 0x00]);
    out.push(vec![0xff; 11]);
    out
}

fn byte_width(v: u64) -> usize {
    (8 - v.leading_zeros() as usize / 8).max(1)
}

/// LEB128 of `v`, as postcard writes unsigned integers wider than a byte.
pub fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

struct Fuzzer<'a> {
    target: Target<'a>,
    corpus: Vec<Vec<u8>>,
    outcomes: HashSet<Outcome>,
    integers: Vec<Vec<u8>>,
    executions: u64,
}

impl<'a> Fuzzer<'a> {
    fn new(target: Target<'a>) -> Self {
        Fuzzer {
            target,
            corpus: Vec::new(),
            outcomes: HashSet::new(),
            integers: interesting_integers(),
            executions: 0,
        }
    }

    fn regressions_dir(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("regressions").join(self.target.name)
    }

    fn replay_regressions(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.regressions_dir()) else { return };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if path.extension().is_some_and(|e| e == "md") {
                continue; // notes about the crashers
            }
            let input = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read regression input {}: {e}", path.display()));
            self.execute(&input, &format!("regression input {}", path.display()));
            self.corpus.push(input);
        }
    }

    fn replay_seeds(&mut self) {
        let seeds = std::mem::take(&mut self.target.seeds);
        for seed in &seeds {
            self.execute(seed, "a seed input");
        }
        self.corpus.extend(seeds);
        if self.corpus.is_empty() {
            self.corpus.push(Vec::new());
        }
    }

    fn mutate_for(&mut self, seed: u64, time: Duration) {
        let mut rng = Rng(seed);
        let deadline = Instant::now() + time;
        while Instant::now() < deadline {
            // Check the clock every few inputs only: most inputs take microseconds.
            for _ in 0..16 {
                let base = self.corpus[rng.below(self.corpus.len())].clone();
                let mut input = base;
                for _ in 0..=rng.below(4) {
                    self.mutate(&mut input, &mut rng);
                }
                input.truncate(MAX_INPUT_LEN);
                let context = format!("seed {seed}");
                if self.execute(&input, &context) && self.corpus.len() < MAX_CORPUS {
                    self.corpus.push(input);
                }
            }
        }
    }

    /// Runs the check on one input; true when its outcome is new. A panic fails the run.
    fn execute(&mut self, input: &[u8], context: &str) -> bool {
        self.executions += 1;
        let check = &self.target.check;
        match catch_unwind(AssertUnwindSafe(|| check(input))) {
            Ok(outcome) => self.outcomes.insert(outcome),
            Err(panic) => self.crash(input, context, panic),
        }
    }

    fn crash(&self, input: &[u8], context: &str, panic: Box<dyn std::any::Any + Send>) -> ! {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(no message)".into());
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crashes");
        let path = dir.join(format!("{}-{:016x}", self.target.name, fnv1a(input)));
        let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
        let saved = match saved {
            Ok(()) => format!("saved as {}", path.display()),
            Err(e) => format!("could not save it to {}: {e}", path.display()),
        };
        panic!(
            "fuzz target {} crashed ({context}): {message}\n  input ({} bytes, hex): {}\n  {saved}\n  \
             after fixing, move it to fuzz/regressions/{}/ so every run replays it",
            self.target.name,
            input.len(),
            hex::encode(input),
            self.target.name,
        );
    }

    fn mutate(&self, input: &mut Vec<u8>, rng: &mut Rng) {
        let len = input.len();
        match rng.below(11) {
            // Flip one bit.
            0 if len > 0 => input[rng.below(len)] ^= 1 << rng.below(8),
            // Set a byte at random.
            1 if len > 0 => input[rng.below(len)] = rng.next_u64() as u8,
            // Insert random bytes.
            2 => {
                let at = rng.below(len + 1);
                for _ in 0..=rng.below(4) {
                    input.insert(at, rng.next_u64() as u8);
                }
            }
            // Delete a range.
            3 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(8)).min(len);
                input.drain(at..end);
            }
            // Duplicate a range.
            4 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(16)).min(len);
                let chunk = input[at..end].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, chunk);
            }
            // Splice with another corpus entry: our head, its tail.
            5 => {
                let other = &self.corpus[rng.below(self.corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            // Overwrite or insert an interesting integer.
            6 | 7 => {
                let token = &self.integers[rng.below(self.integers.len())];
                put(input, token, rng);
            }
            // Overwrite or insert a dictionary token.
            8 | 9 if !self.target.dictionary.is_empty() => {
                let token = &self.target.dictionary[rng.below(self.target.dictionary.len())];
                put(input, token, rng);
            }
            // Truncate.
            10 if len > 0 => input.truncate(rng.below(len)),
            _ => input.push(rng.next_u64() as u8),
        }
    }
}

/// Writes `token` over the input at a random place, or inserts it there.
fn put(input: &mut Vec<u8>, token: &[u8], rng: &mut Rng) {
    let at = rng.below(input.len() + 1);
    if rng.one_in(2) {
        input.splice(at..at, token.iter().copied());
    } else {
        let end = (at + token.len()).min(input.len());
        input.splice(at..end, token.iter().copied());
    }
}

/// FNV-1a, to name crash files by their content.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_leb128() {
        assert_eq!(varint(0), [0]);
        assert_eq!(varint(127), [0x7f]);
        assert_eq!(varint(300), [0xac, 0x02]);
    }

    #[test]
    fn a_panicking_target_fails_the_run_and_saves_the_input() {
        // Panics on any input containing "boom", which the dictionary makes likely.
        let target = Target::new("self-test", |input: &[u8]| {
            assert!(!input.windows(4).any(|w| w == b"boom"), "found it");
            String::new()
        })
        .seeds([b"hello".to_vec()])
        .dictionary([b"boom".to_vec()]);
        let mut fuzzer = Fuzzer::new(target);
        fuzzer.replay_seeds();
        let result =
            catch_unwind(AssertUnwindSafe(|| fuzzer.mutate_for(1, Duration::from_secs(5))));
        let message =
            *result.expect_err("the fuzzer finds the panic").downcast::<String>().unwrap();
        assert!(message.contains("found it") && message.contains("hex"), "{message}");
        let hex = message.split("hex): ").nth(1).unwrap().split_whitespace().next().unwrap();
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("crashes")
            .join(format!("self-test-{:016x}", fnv1a(&hex::decode(hex).unwrap())));
        assert!(path.exists(), "{}", path.display());
        std::fs::remove_file(path).unwrap();
    }
}
