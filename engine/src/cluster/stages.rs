//! A plan cut into stages at its boundaries. `repartition(f)` sends each record to the
//! shard that serves the key `f(r)`; `collect()` sends every record to the initiator; a
//! run's results end on the initiator too (an implicit collect at the end).

use crate::plan::{Func, Step};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Boundary<'a> {
    Repartition(&'a Func),
    Collect,
    /// The end of the plan: results go to the initiator.
    Final,
}

#[derive(Debug)]
pub struct Stage<'a> {
    pub steps: &'a [Step],
    /// Where the stage's output goes.
    pub out: Boundary<'a>,
    /// Whether every shard runs the stage (else only the initiator: it follows a collect).
    pub everywhere: bool,
}

/// Cuts `steps` at each `repartition` and `collect`. A `collect` where records already are
/// on the initiator alone is no boundary.
pub fn split(steps: &[Step]) -> Vec<Stage<'_>> {
    let mut stages = Vec::new();
    let mut start = 0;
    let mut everywhere = true;
    for (i, step) in steps.iter().enumerate() {
        let out = match step {
            Step::Repartition(f) => Boundary::Repartition(f),
            Step::Collect if everywhere => Boundary::Collect,
            _ => continue,
        };
        stages.push(Stage { steps: &steps[start..i], out, everywhere });
        everywhere = matches!(out, Boundary::Repartition(_));
        start = i + 1;
    }
    // Collects left in the last stage (after another collect) are no-ops there.
    stages.push(Stage { steps: &steps[start..], out: Boundary::Final, everywhere });
    stages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::NativeOp;

    #[test]
    fn cuts_at_boundaries() {
        let f = Func::Native(NativeOp::RecordKey);
        let steps = vec![
            Step::Map(f.clone()),
            Step::Repartition(f.clone()),
            Step::Filter(f.clone()),
            Step::Collect,
            Step::Map(f.clone()),
            Step::Collect,
            Step::Repartition(f.clone()),
            Step::Map(f.clone()),
        ];
        let s = split(&steps);
        assert_eq!(s.len(), 4);
        assert_eq!((s[0].steps.len(), s[0].everywhere), (1, true));
        assert!(matches!(s[0].out, Boundary::Repartition(_)));
        assert_eq!((s[1].steps.len(), s[1].everywhere, s[1].out), (1, true, Boundary::Collect));
        // map, collect (a no-op on the initiator) then repartition
        assert_eq!((s[2].steps.len(), s[2].everywhere), (2, false));
        assert_eq!((s[3].steps.len(), s[3].everywhere, s[3].out), (1, true, Boundary::Final));
        assert_eq!(split(&[]).len(), 1);
    }
}
