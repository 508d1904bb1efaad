//! This node's room members as the link keeps them in Redis (a hash per
//! node, and entries in the presence stream), its heartbeat, and reading
//! the other nodes' members anew.

use std::collections::HashMap;

use hub::{PresenceEvent, PresenceKind, Topic};

use super::batch::Batch;
use super::{bounded, Link, Lost, Session, INBOX_LENGTH};
use crate::presence::{self, Member};
use crate::wire;

impl Link {
    /// Reads every other live node's members anew. The nodes come from the
    /// registry of live nodes, by name: no `SCAN` (which a cluster cannot
    /// run across its shards).
    pub(super) async fn reload_all(&mut self, session: &mut Session) -> Result<(), Lost> {
        let nodes: Vec<u32> = bounded(
            redis::cmd("ZRANGE")
                .arg(self.keys.live())
                .arg(0)
                .arg(-1)
                .query_async(&mut session.writer),
        )
        .await?;
        let own = self.node;
        for node in nodes.into_iter().filter(|node| *node != own) {
            self.reload(session, node).await?;
        }
        Ok(())
    }

    /// Reads node `node`'s members anew.
    pub(super) async fn reload(&mut self, session: &mut Session, node: u32) -> Result<(), Lost> {
        let fields: HashMap<String, String> = bounded(
            redis::cmd("HGETALL")
                .arg(self.keys.members(node))
                .query_async(&mut session.writer),
        )
        .await?;
        let members = (fields.iter())
            .filter_map(|(field, value)| {
                Some((presence::parse_field(field)?, Member::decode(value)?))
            })
            .collect();
        let events = self.shared.roster().replace(node, members);
        self.follow.announce(events);
        Ok(())
    }

    /// Records a change of this node's members; returns, with their
    /// rooms, the hash fields to write (`Some` value) or delete (`None`).
    pub(super) fn remember(
        &mut self,
        event: &PresenceEvent,
    ) -> Vec<(Topic, String, Option<String>)> {
        let member = Member::of(&event.metadata);
        let mut changes = Vec::new();
        match (&event.kind, &event.topic) {
            (PresenceKind::Joined, Topic::Room(room)) => {
                changes.push((
                    event.topic.clone(),
                    presence::field(room.as_str(), event.id),
                    Some(member.encode()),
                ));
                self.mine.insert((event.topic.clone(), event.id), member);
            }
            (PresenceKind::Left, Topic::Room(room)) => {
                let field = presence::field(room.as_str(), event.id);
                changes.push((event.topic.clone(), field, None));
                self.mine.remove(&(event.topic.clone(), event.id));
            }
            (PresenceKind::Updated, _) => {
                for ((topic, id), known) in &mut self.mine {
                    if let (Topic::Room(room), true) = (topic, *id == event.id) {
                        *known = member.clone();
                        let field = presence::field(room.as_str(), *id);
                        changes.push((topic.clone(), field, Some(member.encode())));
                    }
                }
            }
            _ => {}
        }
        changes
    }

    /// Adds an entry of kind `kind` to a partition's presence stream.
    pub(super) fn presence_entry(
        &self,
        batch: &mut Batch,
        partition: usize,
        kind: &str,
        fields: &[(&str, &[u8])],
    ) {
        let stream = self.keys.presence(partition);
        let pipe = &mut batch.on(&stream).pipe;
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(INBOX_LENGTH)
            .arg("*")
            .arg("n")
            .arg(self.node)
            .arg("k")
            .arg(kind);
        for (name, value) in fields {
            pipe.arg(*name).arg(*value);
        }
        pipe.ignore();
    }

    /// A heartbeat: this node kept in the registry of live nodes, and its
    /// members kept from expiring.
    pub(super) fn heartbeat_commands(&self, batch: &mut Batch) {
        let ttl = u64::try_from(self.config.presence_ttl.as_millis()).unwrap_or(u64::MAX);
        self.presence_entry(batch, self.keys.node_partition(self.node), "h", &[]);
        let members = self.keys.members(self.node);
        (batch.on(&members).pipe)
            .cmd("PEXPIRE")
            .arg(&members)
            .arg(ttl)
            .ignore();
        let live = self.keys.live();
        (batch.on(&live).pipe)
            .cmd("EVAL")
            .arg(wire::LIVE)
            .arg(1)
            .arg(&live)
            .arg(self.node)
            .arg(ttl)
            .ignore();
    }

    pub(super) async fn heartbeat(&mut self, session: &mut Session) -> Result<(), Lost> {
        let mut batch = session.batch();
        self.heartbeat_commands(&mut batch);
        self.execute(session, batch).await?;
        let gone = self.shared.roster().expire(self.config.presence_ttl);
        self.follow.announce(gone);
        Ok(())
    }
}
