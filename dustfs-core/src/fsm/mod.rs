//! Explicit finite state machines, sans-IO: plain enums of states and events and a pure
//! transition function. Drivers elsewhere perform the IO and feed the outcomes back as events.
//! Every machine can print its transition table and a Graphviz drawing from the code itself.

pub mod block;
pub mod node;
pub mod supplier;

/// A printable machine: its name and every (from, event, to) edge.
pub trait Machine {
    /// Name used by `dustfs fsm NAME`.
    const NAME: &'static str;
    /// Every transition as (from, event, to) names.
    fn edges() -> Vec<(&'static str, &'static str, &'static str)>;
}

/// The transition table as aligned text.
pub fn table<M: Machine>() -> String {
    let mut out = format!("{:<14} {:<18} {}\n", "from", "event", "to");
    for (f, e, t) in M::edges() {
        out.push_str(&format!("{f:<14} {e:<18} {t}\n"));
    }
    out
}

/// The machine as a Graphviz digraph.
pub fn dot<M: Machine>() -> String {
    let mut out = format!(
        "digraph {} {{\n  rankdir=LR;\n  node [shape=box, style=rounded];\n",
        M::NAME
    );
    for (f, e, t) in M::edges() {
        out.push_str(&format!("  {f} -> {t} [label=\"{e}\"];\n"));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drawings in `docs/fsm/` are generated from the code (`dustfs fsm --dot NAME`);
    /// this fails when they are out of date.
    #[test]
    fn the_drawings_in_docs_are_up_to_date() {
        for (name, drawing) in [
            ("block", dot::<block::BlockMachine>()),
            ("supplier", dot::<supplier::SupplierMachine>()),
            ("node", dot::<node::NodeMachine>()),
        ] {
            let path = format!("{}/../docs/fsm/{name}.dot", env!("CARGO_MANIFEST_DIR"));
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                on_disk, drawing,
                "regenerate with: dustfs fsm --dot {name} > docs/fsm/{name}.dot"
            );
        }
    }
}
