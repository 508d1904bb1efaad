//! This node's room members as the link keeps them in Redis (a hash per
//! node, and entries in the presence stream), its heartbeat, and reading
//! the other nodes' members anew.

use std::collections::HashMap;

use hub::{PresenceEvent, PresenceKind, Topic};
use redis::Pipeline;

use super::{bounded, Link, Lost, Session, INBOX_LENGTH};
use crate::presence::{self, Member};

impl Link {
    /// Reads every other node's members anew.
    pub(super) async fn reload_all(&mut self, session: &mut Session) -> Result<(), Lost> {
        let own = self.keys.members(self.node);
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        // SCAN ends when its cursor comes back to 0; bounded all the same.
        for _ in 0..10_000 {
            let (next, found): (u64, Vec<String>) = bounded(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(self.keys.members_pattern())
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut session.writer),
            )
            .await?;
            keys.extend(found.into_iter().filter(|key| *key != own));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        for key in keys {
            let Some(node) = key.rsplit(':').next().and_then(|n| n.parse().ok()) else {
                continue;
            };
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

    /// Records a change of this node's members; returns the hash fields
    /// to write (`Some` value) or delete (`None`).
    pub(super) fn remember(&mut self, event: &PresenceEvent) -> Vec<(String, Option<String>)> {
        let member = Member::of(&event.metadata);
        let mut changes = Vec::new();
        match (&event.kind, &event.topic) {
            (PresenceKind::Joined, Topic::Room(room)) => {
                changes.push((
                    presence::field(room.as_str(), event.id),
                    Some(member.encode()),
                ));
                self.mine.insert((event.topic.clone(), event.id), member);
            }
            (PresenceKind::Left, Topic::Room(room)) => {
                changes.push((presence::field(room.as_str(), event.id), None));
                self.mine.remove(&(event.topic.clone(), event.id));
            }
            (PresenceKind::Updated, _) => {
                for ((topic, id), known) in &mut self.mine {
                    if let (Topic::Room(room), true) = (topic, *id == event.id) {
                        *known = member.clone();
                        changes.push((presence::field(room.as_str(), *id), Some(member.encode())));
                    }
                }
            }
            _ => {}
        }
        changes
    }

    /// Adds an entry of kind `kind` to the presence stream.
    pub(super) fn presence_entry(&self, pipe: &mut Pipeline, kind: &str, fields: &[(&str, &[u8])]) {
        pipe.cmd("XADD")
            .arg(self.keys.presence())
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
    }

    /// A heartbeat, and this node's members kept from expiring.
    pub(super) fn heartbeat_commands(&self, pipe: &mut Pipeline) {
        let seconds = self.config.presence_ttl.as_millis();
        self.presence_entry(pipe, "h", &[]);
        pipe.ignore();
        pipe.cmd("PEXPIRE")
            .arg(self.keys.members(self.node))
            .arg(u64::try_from(seconds).unwrap_or(u64::MAX))
            .ignore();
    }

    pub(super) async fn heartbeat(&mut self, session: &mut Session) -> Result<(), Lost> {
        let mut pipe = redis::pipe();
        self.heartbeat_commands(&mut pipe);
        bounded(pipe.query_async::<()>(&mut session.writer)).await?;
        let gone = self.shared.roster().expire(self.config.presence_ttl);
        self.follow.announce(gone);
        Ok(())
    }
}
