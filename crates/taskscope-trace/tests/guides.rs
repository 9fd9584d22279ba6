//! The Rust blocks of the README and the guides compile as GitHub shows them: rustdoc tests them
//! as doctests (`taskscope`, `taskscope-select`, `taskscope-trace`), and these checks keep what
//! a doctest would hide out of them, so a copied block is the program that was tested.

/// The workspace root, where the guides live.
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");

const GUIDES: [&str; 5] = [
    "README.md",
    "docs/concepts.md",
    "docs/go-migration.md",
    "docs/operations.md",
    "docs/cancel-safety.md",
];

/// A fenced block that rustdoc runs as Rust: its info string, first line number and lines.
struct Block {
    info: String,
    line: usize,
    code: Vec<String>,
    /// The paragraph just before the block.
    intro: String,
}

fn rust_blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    let mut in_other_block = false;
    let mut paragraph = String::new();
    let mut after_blank = true;
    for (index, line) in text.lines().enumerate() {
        let fence = line.strip_prefix("```");
        if let Some(block) = &mut open {
            match fence {
                Some(_) => blocks.extend(open.take()),
                None => block.code.push(line.to_owned()),
            }
        } else if in_other_block {
            in_other_block = fence.is_none();
        } else if let Some(info) = fence {
            let intro = std::mem::take(&mut paragraph);
            // rustdoc reads a fence with no language as Rust.
            if info.is_empty() || info == "rust" || info.starts_with("rust,") {
                let (info, line) = (info.to_owned(), index + 1);
                open = Some(Block {
                    info,
                    line,
                    code: Vec::new(),
                    intro,
                });
            } else {
                in_other_block = true;
            }
        } else if line.trim().is_empty() {
            after_blank = true;
        } else {
            if after_blank {
                paragraph.clear();
            }
            paragraph.push_str(line);
            paragraph.push('\n');
            after_blank = false;
        }
    }
    assert!(open.is_none() && !in_other_block, "a fence is never closed");
    blocks
}

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}{name}"))
        .unwrap_or_else(|error| panic!("{name}: {error}"))
}

#[test]
fn guide_blocks_hide_no_lines() {
    let mut hidden = Vec::new();
    for name in GUIDES {
        for block in rust_blocks(&read(name)) {
            for (offset, line) in block.code.iter().enumerate() {
                // rustdoc hides a line that is `#` or starts with `# ` (after indentation).
                let line = line.trim_start();
                if line == "#" || line.starts_with("# ") {
                    hidden.push(format!("{name}:{}: {line}", block.line + 1 + offset));
                }
            }
        }
    }
    assert!(
        hidden.is_empty(),
        "hidden lines show on GitHub:\n{}",
        hidden.join("\n")
    );
}

#[test]
fn guide_blocks_are_programs_or_marked_fragments() {
    let mut fragments = Vec::new();
    for name in GUIDES {
        let blocks = rust_blocks(&read(name));
        assert!(
            !blocks.is_empty(),
            "{name} has no Rust block: is the path right?"
        );
        for block in blocks {
            let ignored = block.info.split(',').any(|word| word == "ignore");
            if !ignored && !block.code.iter().any(|line| line.contains("fn main(")) {
                fragments.push(format!("{name}:{}", block.line));
            }
        }
    }
    assert!(
        fragments.is_empty(),
        "blocks without `fn main` nor `ignore`:\n{}",
        fragments.join("\n")
    );
}

#[test]
fn paused_time_is_announced() {
    let mut silent = Vec::new();
    for name in GUIDES {
        for block in rust_blocks(&read(name)) {
            let paused = block
                .code
                .iter()
                .any(|line| line.contains("start_paused = true"));
            if paused && !block.intro.contains("`test-util`") {
                silent.push(format!("{name}:{}", block.line));
            }
        }
    }
    assert!(
        silent.is_empty(),
        "blocks on paused time whose paragraph before does not name tokio's `test-util`:\n{}",
        silent.join("\n")
    );
}
