//! Replays every input of `corpus/<target>/` through its target: what crashed once, and every
//! seed, must pass. `make test` runs it; `make fuzz` adds to the corpus.

use std::path::Path;

#[test]
fn every_corpus_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut replayed = 0;
    for (name, target) in autoglm_fuzz::TARGETS {
        let dir = root.join(name);
        let inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a corpus entry").path())
            .collect();
        assert!(!inputs.is_empty(), "{}: no seeds", dir.display());
        for path in inputs {
            let data = std::fs::read(&path).expect("a corpus input");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", path.display());
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} corpus inputs");
}
