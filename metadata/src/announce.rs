//! The text form of commit announcements, as they travel in PostgreSQL notifications.
//!
//! One payload is `FROM|TOPIC:PARTITION:HWM,...`; a notification carries at most
//! [`MAX_PAYLOAD`] bytes (PostgreSQL refuses 8000 and more), so many marks take several.

use crate::{Announcement, HighWatermark, TopicId};

/// The notification channel every agent listens on.
pub(crate) const CHANNEL: &str = "shoal_commits";
/// Largest payload sent, below PostgreSQL's limit of 8000 bytes.
const MAX_PAYLOAD: usize = 7900;

/// Payloads announcing `marks` from agent `from`.
pub(crate) fn encode(from: i32, marks: &[HighWatermark]) -> Vec<String> {
    let mut payloads = Vec::new();
    let head = format!("{from}|");
    let mut current = head.clone();
    for mark in marks {
        let item = format!("{}:{}:{}", mark.topic, mark.partition, mark.high_watermark);
        if current.len() > head.len() && current.len() + 1 + item.len() > MAX_PAYLOAD {
            payloads.push(std::mem::replace(&mut current, head.clone()));
        }
        if current.len() > head.len() {
            current.push(',');
        }
        current.push_str(&item);
    }
    if current.len() > head.len() {
        payloads.push(current);
    }
    payloads
}

/// Parses one payload; `None` for anything malformed (another program on the channel).
pub(crate) fn decode(payload: &str) -> Option<Announcement> {
    let (from, items) = payload.split_once('|')?;
    let from = from.parse().ok()?;
    let marks = items
        .split(',')
        .map(|item| {
            let mut parts = item.splitn(3, ':');
            Some(HighWatermark {
                topic: TopicId::parse_str(parts.next()?).ok()?,
                partition: parts.next()?.parse().ok()?,
                high_watermark: parts.next()?.parse().ok()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Announcement::Moved { from, marks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_splits_long_announcements() {
        let marks: Vec<HighWatermark> = (0..1000)
            .map(|p| HighWatermark {
                topic: TopicId::from_u128(p as u128 * 7919),
                partition: p,
                high_watermark: i64::from(p) * 1_000_000,
            })
            .collect();
        let payloads = encode(42, &marks);
        assert!(payloads.len() > 1);
        let mut decoded = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD);
            match decode(payload) {
                Some(Announcement::Moved { from: 42, marks }) => decoded.extend(marks),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(decoded, marks);
    }

    #[test]
    fn nothing_to_announce_sends_nothing() {
        assert!(encode(1, &[]).is_empty());
    }

    #[test]
    fn malformed_payloads_are_ignored() {
        for payload in [
            "",
            "x|",
            "1|nope",
            "1|00000000-0000-0000-0000-000000000000:1",
        ] {
            assert_eq!(decode(payload), None, "{payload}");
        }
    }
}
