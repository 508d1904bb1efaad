//! Commands on their way to Redis, grouped into pipelines: one pipeline
//! on a single Redis, one per hash slot on a cluster (which runs a
//! pipeline only if all of its keys share a slot).

use std::collections::HashMap;

use redis::Pipeline;

use super::Step;
use crate::wire;

/// One pipeline, and what to do with the reply of each of its commands
/// that is not ignored, in order.
#[derive(Default)]
pub(super) struct Group {
    pub(super) pipe: Pipeline,
    pub(super) steps: Vec<Step>,
}

pub(super) struct Batch {
    /// Whether to group by slot (a cluster) or not (one Redis).
    sharded: bool,
    groups: Vec<Group>,
    /// Each slot's group.
    slots: HashMap<u16, usize>,
}

impl Batch {
    pub(super) fn new(sharded: bool) -> Self {
        Self {
            sharded,
            groups: Vec::new(),
            slots: HashMap::new(),
        }
    }

    /// The group for commands on `key`: commands on keys of one slot keep
    /// their order.
    pub(super) fn on(&mut self, key: &str) -> &mut Group {
        let slot = if self.sharded {
            wire::slot(key.as_bytes())
        } else {
            0
        };
        let Self { groups, slots, .. } = self;
        let index = *slots.entry(slot).or_insert_with(|| {
            groups.push(Group::default());
            groups.len() - 1
        });
        &mut groups[index]
    }

    /// Steps in every group.
    pub(super) fn steps(&self) -> usize {
        self.groups.iter().map(|group| group.steps.len()).sum()
    }

    pub(super) fn into_groups(self) -> Vec<Group> {
        self.groups
    }
}

#[cfg(test)]
mod tests {
    use hub::Topic;

    use super::*;

    #[test]
    fn a_cluster_batch_has_a_pipeline_per_slot_and_one_redis_one() {
        let keys = wire::Keys::new("t", 16);
        for (sharded, expected) in [(true, 3), (false, 1)] {
            let mut batch = Batch::new(sharded);
            for key in [keys.users(0), keys.users(1), keys.presence(0), keys.live()] {
                batch.on(&key).pipe.cmd("XLEN").arg(&key);
                batch.on(&key).steps.push(Step::Epoch(Topic::All, 1));
            }
            assert_eq!(batch.steps(), 4);
            let groups = batch.into_groups();
            assert_eq!(groups.len(), expected, "sharded: {sharded}");
            let commands: usize = groups.iter().map(|group| group.pipe.len()).sum();
            assert_eq!(commands, 4);
        }
    }
}
